"""Time of writing a result's outputs (``result.save(dir)``: grids, one overlay per map,
result.json, index.html) and their sizes, for this checkout and optionally an older commit.

    python benchmarks/bench_save.py [--repeats 3] [--ref COMMIT] [--cli]
        [--out benchmarks/results/save.json]

Cases (scikit-image photos, shipped models): ``caption`` astronaut 512x512 with
shapes-captioner (its generated caption, 20 words); ``vqa`` chelsea resized to 451x300 with
shapes-vqa, top 20 answers and a contrast (22 maps); ``classify`` coffee 600x400 with
shapes-classifier, top 3; ``caption-large`` astronaut upscaled to 1400x1400 (under the pixel
limit, above the display size). Each case runs in a fresh subprocess (``PYTHONPATH`` set to
the code measured): the result is computed once, then ``save`` runs ``--repeats`` times into
fresh folders (median wall seconds; the first run, which imports what saving needs, is
reported apart). ``--ref COMMIT`` measures that commit's ``mmcam/`` and ``models/`` too
(extracted with ``git archive``), in the same way. ``--cli`` adds the wall time of the whole
``mmcam caption`` command on the 512 px photo (one run per version; for several runs with
min/median/max see bench_startup.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("caption", "vqa", "classify", "caption-large")


def photos(folder: Path) -> dict[str, Path]:
    """The case images, written once as PNG files."""
    import skimage.data as data
    from PIL import Image

    astronaut = Image.fromarray(data.astronaut())
    images = {
        "caption": astronaut,
        "vqa": Image.fromarray(data.chelsea()).resize((451, 300), Image.BILINEAR),
        "classify": Image.fromarray(data.coffee()),
        "caption-large": astronaut.resize((1400, 1400), Image.BICUBIC),
    }
    out = {}
    for name, im in images.items():
        out[name] = folder / f"{name}.png"
        im.save(out[name])
    return out


def worker(case: str, image: str, repeats: int, scratch: str) -> dict:
    """In the subprocess: compute the case's result, then time ``save`` (the mmcam on
    ``sys.path``)."""
    import torch

    import mmcam
    from mmcam.models.hub import load_model

    torch.manual_seed(0)
    if case.startswith("caption"):
        from mmcam.caption import CaptionExplainer

        result = CaptionExplainer(load_model("shapes-captioner")).explain(image)
        n_maps = len(result.words) + 1
    elif case == "vqa":
        from mmcam.vqa import VQAExplainer

        ex = VQAExplainer(load_model("shapes-vqa"))
        first = ex.explain(image, "what color is the circle?", top_k=2)
        other = first.top_answers[1][0]
        result = ex.explain(image, "what color is the circle?", top_k=20, contrast=other)
        n_maps = 1 + len(result.top_answers) + 1
    else:
        from mmcam.classify import ClassExplainer

        result = ClassExplainer(load_model("shapes-classifier")).explain(image, top=3)
        n_maps = len(result.classes)
    times = []
    for k in range(repeats + 1):
        out = Path(scratch) / f"{case}-{k}"
        t0 = time.perf_counter()
        result.save(out)
        times.append(time.perf_counter() - t0)
    files = sorted(out.iterdir())
    return {
        "mmcam": str(Path(mmcam.__file__).parent),
        "image_size": list(result.image.size),
        "maps": n_maps,
        "first_save_s": round(times[0], 3),
        "save_s": round(statistics.median(times[1:]), 3),
        "save_runs_s": [round(t, 3) for t in times[1:]],
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "html_bytes": (out / "index.html").stat().st_size,
        "png_files": sum(f.suffix == ".png" for f in files),
    }


def run_case(code: Path, case: str, image: Path, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), MMCAM_MODELS=str(code / "models"))
    with tempfile.TemporaryDirectory() as scratch:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case,
               "--image", str(image), "--repeats", str(repeats), "--scratch", scratch]
        done = subprocess.run(cmd, env=env, cwd=scratch, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{case} failed for {code}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_wall(code: Path, image: Path) -> float:
    """Wall seconds of the whole ``mmcam caption IMAGE --out DIR`` command, run as users run
    it (``python -m mmcam``: the program's own start-up and exit)."""
    env = dict(os.environ, PYTHONPATH=str(code), MMCAM_MODELS=str(code / "models"))
    with tempfile.TemporaryDirectory() as scratch:
        cmd = [sys.executable, "-m", "mmcam", "caption", str(image), "--out",
               str(Path(scratch) / "out")]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=scratch, check=True, capture_output=True)
        return round(time.perf_counter() - t0, 3)


def extract(commit: str, folder: Path) -> Path:
    """``mmcam/`` and ``models/`` of ``commit`` extracted under ``folder``."""
    archive = folder / "ref.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit, "mmcam", "models"],
                       stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "ref", filter="data")
    return folder / "ref"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref", help="also measure this commit (e.g. the one before the change)")
    ap.add_argument("--cli", action="store_true", help="also time the whole mmcam caption")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "save.json"))
    ap.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.image, args.repeats, args.scratch)))
        return
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": os.getloadavg(), "repeats": args.repeats,
        "command": " ".join(["python", "benchmarks/bench_save.py"] + sys.argv[1:]),
        "versions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = photos(Path(tmp))
        codes = {f"this checkout ({commit})": ROOT}
        if args.ref:
            codes[f"ref {args.ref}"] = extract(args.ref, Path(tmp))
        for label, code in codes.items():
            rows = {}
            for case in args.cases:
                rows[case] = run_case(code, case, images[case], args.repeats)
                r = rows[case]
                print(f"{label:>28s}  {case:>13s}  {r['maps']:2d} maps  save {r['save_s']:6.2f} s"
                      f"  (first {r['first_save_s']:6.2f} s)  html {r['html_bytes'] / 1e6:6.2f} MB"
                      f"  all files {r['bytes'] / 1e6:6.2f} MB", flush=True)
            if args.cli:
                rows["cli_caption_wall_s"] = cli_wall(code, images["caption"])
                print(f"{label:>28s}  mmcam caption (512 px) wall "
                      f"{rows['cli_caption_wall_s']:.2f} s", flush=True)
            report["versions"][label] = rows
    report["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
