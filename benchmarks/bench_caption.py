"""Speed and peak memory of word-by-word Grad-CAM on a ResNet-50 + LSTM captioner (issue 4).

    python benchmarks/bench_caption.py [--repeats N] [--words 16] [--lengths 4 8 16 32]
                                       [--out benchmarks/results/caption_speed.json]

The captioner is ``demos/custom_captioner.py`` (random weights, seed 0, 1003-token vocabulary)
on scikit-image's ``chelsea.png`` resized to 224x224, so every method's maps are 224x224.
Before timing, every method's maps are checked against mmcam's: the per-word loop and captum
to 1e-5 of each map's max, pytorch-grad-cam (min-max normalized per map) to 1e-4. Times are
wall-clock medians over ``--repeats`` runs after one warm-up run, methods interleaved (their
order rotated every repeat). Peak memory: one fresh subprocess per method; after a warm-up run the
kernel's peak-RSS counter is reset (``/proc/self/clear_refs``) and the increase of ``VmHWM``
over the RSS before the measured run is reported, with glibc's malloc set to return large
blocks to the OS (``MALLOC_MMAP_THRESHOLD_``) so that freed memory is not reused unseen.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demos.custom_captioner import ResNetLSTMCaptioner, default_vocab  # noqa: E402
from mmcam.batched import copy_gradients  # noqa: E402
from mmcam.cam import gradcam, localize, upsample  # noqa: E402
from mmcam.caption import CaptionExplainer, word_membership  # noqa: E402

SIZE = 224
SEED = 0
Maps = torch.Tensor | None


class Setup:
    """The seeded captioner, the 224x224 photo and a greedy caption of every length."""

    def __init__(self, lengths: list[int]) -> None:
        import skimage

        torch.manual_seed(SEED)
        self.model = ResNetLSTMCaptioner(default_vocab(1000), resnet="resnet50").eval()
        photo = Path(skimage.__file__).parent / "data" / "chelsea.png"
        self.image = Image.open(photo).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        with torch.no_grad():
            feats = self.model.encode(self.model.prepare(self.image))
            self.captions = {
                n: " ".join(self.model.words(self.model.generate(feats, n, min_len=n)[0]))
                for n in lengths
            }
        self.reference: dict[int, torch.Tensor] = {}  # mmcam's maps, filled by check()


class TokenLogProbs(nn.Module):
    """pixels (B,3,224,224) -> (B,T) log-probs of a fixed caption: ``target=t`` is word t."""

    def __init__(self, captioner: ResNetLSTMCaptioner, token_ids: torch.Tensor) -> None:
        super().__init__()
        self.captioner = captioner
        self.token_ids = token_ids

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        ids = self.token_ids.expand(pixels.shape[0], -1)
        return self.captioner.score_tokens(self.captioner.encode(pixels), ids)


class WordTarget:
    """pytorch-grad-cam target: the log-prob of word ``t`` in one sample's (T,) output."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[self.t]


def run_generate(s: Setup, n: int) -> Maps:
    """Encoder pass + greedy decoding of an ``n``-word caption (no maps)."""
    with torch.no_grad():
        feats = s.model.encode(s.model.prepare(s.image))
        s.model.generate(feats, max_len=n, min_len=n)
    return None


def run_explain(s: Setup, n: int) -> Maps:
    """mmcam: explain every word of the given caption (maps, boxes, sentence map)."""
    return CaptionExplainer(s.model).explain(s.image, s.captions[n]).maps


def run_generate_explain(s: Setup, n: int) -> Maps:
    """mmcam: generate an ``n``-word caption, then explain every word."""
    s.model.min_len = n
    try:
        res = CaptionExplainer(s.model).explain(s.image, max_len=n)
    finally:
        s.model.min_len = 0
    assert res.caption == s.captions[n], (res.caption, s.captions[n])
    return res.maps


def run_maps_only(s: Setup, n: int) -> Maps:
    """Diagnostic: explain() without boxes and result object (encoder, batched grad, maps)."""
    m = s.model
    ids = m.tokenize(s.captions[n])
    with torch.no_grad():
        feats = m.encode(m.prepare(s.image))
    T = ids.shape[0]
    _, G = copy_gradients(feats, lambda c: m.score_tokens(c, ids.expand(c.shape[0], T)),
                          word_membership(m, ids), 64)
    return upsample(gradcam(feats.expand(T, -1, -1, -1), G), (SIZE, SIZE))


def run_loop(s: Setup, n: int) -> Maps:
    """The naive way: per word, encoder + decoder forward and one backward to ``layer4``."""
    m = s.model
    ids = m.tokenize(s.captions[n])[None]
    maps = []
    for t in range(ids.shape[1]):
        feats = m.encode(m.prepare(s.image))
        lp = m.score_tokens(feats, ids)[0, t]
        (g,) = torch.autograd.grad(lp, feats)
        maps.append(gradcam(feats.detach(), g))
    return upsample(torch.cat(maps), (SIZE, SIZE))


def run_captum(s: Setup, n: int) -> Maps:
    """captum ``LayerGradCam`` at ``layer4``, one ``attribute`` call per word."""
    from captum.attr import LayerAttribution, LayerGradCam

    m = s.model
    forward = TokenLogProbs(m, m.tokenize(s.captions[n])[None])
    cam = LayerGradCam(forward, m.encoder.layer4)
    pixels = m.prepare(s.image)
    maps = []
    for t in range(n):
        attr = cam.attribute(pixels, target=t, relu_attributions=True)
        maps.append(LayerAttribution.interpolate(attr, (SIZE, SIZE), "bilinear")[0, 0])
    return torch.stack(maps).detach()


def run_pytorch_gradcam(s: Setup, n: int) -> Maps:
    """pytorch-grad-cam ``GradCAM`` at ``layer4``, one call with one target per word."""
    from pytorch_grad_cam import GradCAM

    m = s.model
    forward = TokenLogProbs(m, m.tokenize(s.captions[n])[None])
    pixels = m.prepare(s.image)
    with GradCAM(model=forward, target_layers=[m.encoder.layer4]) as cam:
        maps = [torch.from_numpy(cam(input_tensor=pixels, targets=[WordTarget(t)])[0])
                for t in range(n)]
    for p in m.parameters():  # it calls loss.backward(): drop the parameter grads it left
        p.grad = None
    return torch.stack(maps)


def run_localize(s: Setup, n: int) -> Maps:
    """Diagnostic: the 15% boxes of ``n`` maps as explain() computes them (mmcam.cam.localize)."""
    localize(s.reference[n])
    return None


METHODS: dict[str, tuple[str, Callable[[Setup, int], Maps]]] = {
    "generate": ("generate the caption (encoder + greedy)", run_generate),
    "explain": ("mmcam: explain all words of the given caption", run_explain),
    "generate_explain": ("mmcam: generate + explain (`explain(image)`)", run_generate_explain),
    "maps_only": ("  diagnostic: explain without boxes (encoder + batched grad + maps)",
                  run_maps_only),
    "localize": ("  diagnostic: `localize` (15% boxes) of the word maps", run_localize),
    "loop": ("per-word loop (forward + backward per word)", run_loop),
    "captum": ("captum `LayerGradCam`, one `attribute` per word", run_captum),
    "pytorch_gradcam": ("pytorch-grad-cam `GradCAM`, one target per word", run_pytorch_gradcam),
}


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0,1]: ``(m - min) / (max - min)``.

    pytorch-grad-cam normalizes twice, ``(m - min) / (1e-7 + max(m - min))`` on the layer map
    and again after resizing, which gives this up to the 1e-7 (its later words' maps here are
    ~1e-6, so one pass alone would be 5% off).
    """
    m = maps - maps.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def relative_difference(maps: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest ``|maps - ref|`` over each reference map's own max, over all maps."""
    scale = ref.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    return float(((maps - ref).abs() / scale).max())


def check(s: Setup, n: int) -> dict[str, float]:
    """Assert every method gives mmcam's maps; return the largest relative differences.

    Exact methods must agree to 1e-5 of each map's max; pytorch-grad-cam's min-max
    normalized maps to 1e-4 (OpenCV's bilinear resize, float32).
    """
    ref = CaptionExplainer(s.model).explain(s.image, s.captions[n])
    assert ref.maps.shape == (n, SIZE, SIZE) and bool((ref.maps.amax(dim=(1, 2)) > 0).all())
    s.reference[n] = ref.maps
    out = {}
    for name in ("generate_explain", "maps_only", "loop", "captum"):
        out[name] = relative_difference(METHODS[name][1](s, n), ref.maps)
        assert out[name] <= 1e-5, f"{name} differs from mmcam by {out[name]:.2e} at {n} words"
    lmaps = F.interpolate(ref.layer_maps[:, None], (SIZE, SIZE), mode="bilinear",
                          align_corners=False)[:, 0]
    out["pytorch_gradcam"] = float((METHODS["pytorch_gradcam"][1](s, n) - minmax(lmaps)).abs()
                                   .max())
    assert out["pytorch_gradcam"] <= 1e-4, f"pytorch-grad-cam differs by {out['pytorch_gradcam']}"
    return out


def rss_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(method: str, n: int) -> dict[str, float]:
    """In this (fresh) process: peak RSS increase of one run of ``method``, after a warm-up."""
    import resource

    s = Setup([n])
    s.reference[n] = run_explain(s, n)
    fn = METHODS[method][1]
    fn(s, n)  # warm-up: lazy imports, thread pools, oneDNN primitives
    gc.collect()
    base = rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        how = "VmHWM after clear_refs=5"
    except OSError:
        how = "ru_maxrss (not reset: may include setup)"
    fn(s, n)
    peak = rss_kib("VmHWM") if how.startswith("VmHWM") else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    return {"base_mib": base / 1024, "peak_mib": peak / 1024,
            "increase_mib": (peak - base) / 1024, "how": how}


def measure_memory(method: str, n: int) -> dict[str, float]:
    """Run :func:`memory_probe` for ``method`` in a fresh Python process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, __file__, "--memory-probe", method, "--words", str(n)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_methods(s: Setup, jobs: list[tuple[str, int]], repeats: int,
                 bar: tqdm) -> tuple[dict[tuple[str, int], list[float]], list[float]]:
    """Wall times of each (method, length) job: one warm-up, then ``repeats`` interleaved runs.

    Also returns the 1-minute load average after each repeat.
    """
    times: dict[tuple[str, int], list[float]] = {j: [] for j in jobs}
    loads = []
    for name, n in jobs:
        METHODS[name][1](s, n)
        bar.update(1)
    for r in range(repeats):
        k = r % len(jobs)
        for name, n in jobs[k:] + jobs[:k]:  # rotate the order every repeat
            gc.collect()
            t0 = time.perf_counter()
            METHODS[name][1](s, n)
            times[(name, n)].append(time.perf_counter() - t0)
            bar.update(1)
        loads.append(os.getloadavg()[0])
    return times, loads


def machine() -> dict[str, object]:
    """CPU model, core count, torch threads and versions."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                     if ln.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    from importlib.metadata import version

    import captum
    import pytorch_grad_cam  # noqa: F401

    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "captum": captum.__version__, "grad_cam": version("grad-cam")}


def table(results: dict, words: int) -> str:
    """The markdown tables: methods at ``words`` words, then scaling with caption length."""
    t = results["times"]
    med = {k: v["median_s"] for k, v in t.items()}
    gen, ex = med[f"generate@{words}"], med[f"explain@{words}"]
    rows = ["| method | median s | / generate | / mmcam explain | peak RSS increase MiB |",
            "|---|---:|---:|---:|---:|"]
    for name, (label, _) in METHODS.items():
        key = f"{name}@{words}"
        if key not in med:
            continue
        mem = results["memory"].get(name)
        m = f"{mem['increase_mib']:.0f}" if mem else "-"
        rows.append(f"| {label} | {med[key]:.3f} | {med[key] / gen:.2f} | "
                    f"{med[key] / ex:.2f} | {m} |")
    rows += ["", "| words | generate s | explain s | generate+explain s | per-word loop s | "
             "explain / generate | loop / explain |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in results["lengths"]:
        g, e, lp = med[f"generate@{n}"], med[f"explain@{n}"], med[f"loop@{n}"]
        ge = med.get(f"generate_explain@{n}")
        ges = f"{ge:.3f}" if ge is not None else "-"
        rows.append(f"| {n} | {g:.3f} | {e:.3f} | {ges} | {lp:.3f} | {e / g:.2f} | {lp / e:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--words", type=int, default=16, help="caption length of the main table")
    p.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/caption_speed.json"))
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.words)))
        return

    load_before = os.getloadavg()
    lengths = sorted(set(args.lengths) | {args.words})
    s = Setup(lengths)
    diffs = {n: check(s, n) for n in lengths}
    jobs = [(name, args.words) for name in METHODS]
    jobs += [(name, n) for n in lengths if n != args.words
             for name in ("generate", "explain", "generate_explain", "loop")]
    mem_methods = [] if args.no_memory else [m for m in METHODS if m != "localize"]
    total = len(jobs) * (args.repeats + 1) + len(mem_methods)
    with tqdm(total=total, desc="bench_caption", unit="run") as bar:
        times, loads = time_methods(s, jobs, args.repeats, bar)
        memory = {}
        for m in mem_methods:
            memory[m] = measure_memory(m, args.words)
            bar.update(1)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "load_avg_1min_after_each_repeat": loads,
        "setup": {"model": "ResNetLSTMCaptioner(resnet50, embed=hidden=512, vocab 1000+3)",
                  "weights": f"random, torch.manual_seed({SEED})", "image": "chelsea.png 224x224",
                  "captions": s.captions},
        "repeats": args.repeats, "words": args.words, "lengths": lengths,
        "max_relative_difference_to_mmcam": diffs,
        "times": {f"{k[0]}@{k[1]}": {"median_s": statistics.median(v), "min_s": min(v),
                                     "max_s": max(v), "runs_s": v} for k, v in times.items()},
        "memory": memory,
        "memory_method": "fresh subprocess per method, warm-up run, VmHWM reset via "
                         "/proc/self/clear_refs, increase = VmHWM - VmRSS before the run; "
                         "MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=131072",
    }
    med = {k: v["median_s"] for k, v in results["times"].items()}
    w = args.words
    results["targets"] = {
        "explain_over_generate": med[f"explain@{w}"] / med[f"generate@{w}"],
        "explain_over_generate_target": 1.5,
        "loop_over_explain": med[f"loop@{w}"] / med[f"explain@{w}"],
        "loop_over_explain_target": 10.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results, w))
    tg = results["targets"]
    print(f"\nexplain/generate = {tg['explain_over_generate']:.2f} (target <= 1.5), "
          f"loop/explain = {tg['loop_over_explain']:.1f} (target >= 10); load average "
          f"before {load_before[0]:.2f}, after {results['load_avg_after'][0]:.2f}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
