"""Memory a caption result holds, and peak memory, for the worst case of issue 11: the word
limit's 64 words on a 2-megapixel image (under ``MMCAM_MAX_PIXELS``, explained at its size).

    python benchmarks/bench_result_memory.py [--before REV]
        [--out benchmarks/results/result_memory.json]

The captioner is ``demos/custom_captioner.py`` (ResNet-50 + LSTM, random weights, seed 0);
the image scikit-image's ``chelsea.png`` resized to 1740x1200 (2.09 Mpx); the caption 64 words
of its vocabulary. Each variant runs in a fresh Python process: this tree ("after") and, with
``--before``, the tree of commit REV checked out in a temporary git worktree ("before"). Per
variant: the tensor bytes the result holds (distinct storages reachable from it) right after
``explain`` and after ``to_dict()`` + ``save()``; the peak RSS increase of ``explain`` and
of ``save`` (``VmHWM`` reset through ``/proc/self/clear_refs`` before each); their wall and
CPU seconds (1 torch thread).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1740, 1200)
WORDS = 64


def tensor_bytes(obj: Any, seen: set | None = None) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (attributes, lists,
    tuples, dicts; PIL images not counted)."""
    import torch
    from PIL import Image

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        if ("st", st.data_ptr()) in seen:
            return 0
        seen.add(("st", st.data_ptr()))
        return st.nbytes()
    if isinstance(obj, (list, tuple, set)):
        return sum(tensor_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(x, seen) for x in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, Image.Image)):
        return sum(tensor_bytes(x, seen) for x in vars(obj).values())
    return 0


def kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measured(fn: Any) -> tuple[Any, dict[str, float]]:
    """``fn()`` and its wall s, CPU s and peak RSS increase (MiB) over the RSS before."""
    gc.collect()
    base = kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    stats = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
             "peak_rss_increase_mib": (kib("VmHWM") - base) / 1024}
    return out, stats


def probe() -> dict[str, Any]:
    """One variant, in this process (the tree on ``sys.path[0]``)."""
    import skimage
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from demos.custom_captioner import ResNetLSTMCaptioner, default_vocab
    from mmcam.caption import CaptionExplainer

    torch.manual_seed(0)
    model = ResNetLSTMCaptioner(default_vocab(1000), resnet="resnet50").eval()
    photo = Path(skimage.__file__).parent / "data" / "chelsea.png"
    image = Image.open(photo).convert("RGB").resize(SIZE, Image.BILINEAR)
    caption = " ".join(model.itos[3 + (7 * k) % 1000] for k in range(WORDS))
    ex = CaptionExplainer(model)
    small = image.resize((224, 224))
    ex.explain(small, caption)  # warm-up (lazy imports, oneDNN primitives)
    res, explain = measured(lambda: ex.explain(image, caption))
    held = tensor_bytes(res)
    with tempfile.TemporaryDirectory() as tmp:
        _, save = measured(lambda: (res.to_dict(), res.save(Path(tmp) / "out")))
    return {"words": len(res.words), "image_size": list(image.size),
            "megapixels": image.width * image.height / 1e6,
            "result_tensor_mib_after_explain": held / 2**20,
            "result_tensor_mib_after_save": tensor_bytes(res) / 2**20,
            "explain": explain, "to_dict_and_save": save}


def run_variant(tree: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1",
               MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe"],
                         cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit(tree: Path, rev: str = "HEAD") -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=tree, capture_output=True,
                          text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", metavar="REV", help="also measure the tree of commit REV")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/result_memory.json"))
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(probe()))
        return
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_avg_before": os.getloadavg(),
        "setup": f"ResNetLSTMCaptioner(resnet50), random weights seed 0; chelsea.png resized "
                 f"to {SIZE[0]}x{SIZE[1]}; a {WORDS}-word caption; 1 torch thread",
        "after": {"commit": commit(ROOT) + " + working tree", **run_variant(ROOT)},
    }
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before],
                           cwd=ROOT, check=True, capture_output=True)
            try:
                results["before"] = {"commit": commit(tree), **run_variant(tree)}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                               capture_output=True)
    results["load_avg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    for name in ("before", "after"):
        if name in results:
            r = results[name]
            print(f"{name} ({r['commit']}): result holds "
                  f"{r['result_tensor_mib_after_explain']:.2f}"
                  f" MiB of tensors after explain, {r['result_tensor_mib_after_save']:.2f} after "
                  f"save; explain peak +{r['explain']['peak_rss_increase_mib']:.0f} MiB, "
                  f"{r['explain']['cpu_s']:.2f} CPU s; to_dict+save peak "
                  f"+{r['to_dict_and_save']['peak_rss_increase_mib']:.0f} MiB, "
                  f"{r['to_dict_and_save']['wall_s']:.2f} wall s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
