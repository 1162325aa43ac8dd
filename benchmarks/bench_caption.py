"""Speed and peak memory of word-by-word Grad-CAM on a ResNet-50 + LSTM captioner (issue 4).

    python benchmarks/bench_caption.py [--repeats N] [--words 16] [--lengths 4 8 16 32]
        [--threads N] [--no-memory] [--out benchmarks/results/caption_speed.json]
    python benchmarks/bench_caption.py --target [--repeats 40] [--words 16]
        [--out benchmarks/results/caption_target.json]

``--target``: issue 8's speed target alone, generate + explain all words <= 1.3x generating
alone: generate, generate + explain (result returned: its pixel maps and boxes are made on
first use) and generate + explain + every map and box made (``result.maps``, ``.boxes``,
``.sentence_map``, ``.sentence_box``), in ``--repeats`` rounds of alternating order; CPU
seconds with 1 torch thread, then wall seconds with 2; medians of the per-round ratios. The
same rounds time the encoder alone and explaining the given caption (:data:`PARTS`): their
difference is the explaining work, printed per thread count.

The captioner is ``demos/custom_captioner.py`` (random weights, seed 0, 1003-token vocabulary)
on scikit-image's ``chelsea.png`` resized to 224x224, so every method's maps are 224x224.
Before timing, every method's maps are checked against mmcam's: the per-word loop and captum
to 1e-5 of each map's max, pytorch-grad-cam (min-max normalized per map) to 1e-4.

Time: ``--repeats`` rounds after a warm-up run; in each round every job of a caption length
runs once, in an order rotated from round to round. Reported: the median wall seconds, the
median CPU seconds (all threads), and ratios as medians of the per-round (paired) ratios.
Peak memory: one fresh subprocess per method; after a warm-up run the kernel's peak-RSS
counter is reset (``/proc/self/clear_refs``) and the increase of ``VmHWM`` over the RSS
before the measured run is reported, with glibc's malloc set to return large blocks to the
OS (``MALLOC_MMAP_THRESHOLD_``) so that freed memory is not reused unseen.
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
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demos.custom_captioner import ResNetLSTMCaptioner, default_vocab  # noqa: E402
from mmcam.cam import gradcam, localize, upsample  # noqa: E402
from mmcam.caption import CaptionExplainer, word_membership  # noqa: E402
from mmcam.engine import layer_gradients  # noqa: E402

SIZE = 224
SEED = 0
Maps = Any  # maps (N,H,W), a result, or None


class StepCaptioner(ResNetLSTMCaptioner):
    """The same captioner, its ``generate`` run with oneDNN off: on a CPU, torch's oneDNN
    LSTM kernel costs about 5 ms per one-token step (0.7 ms without it), so greedy decoding
    gets faster while ``score_tokens`` (many rows, many steps) keeps the kernel that is
    faster there. A faster baseline for the ratio to generating alone."""

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with warnings.catch_warnings():  # torch 2.14 warns about TF32 on Intel GPUs per call
            warnings.filterwarnings("ignore", "TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                return super().generate(*args, **kwargs)


class Setup:
    """The seeded captioner (and its :class:`StepCaptioner` twin, same weights), the
    224x224 photo and a greedy caption of every length."""

    def __init__(self, lengths: list[int]) -> None:
        import skimage

        torch.manual_seed(SEED)
        self.model = ResNetLSTMCaptioner(default_vocab(1000), resnet="resnet50").eval()
        self.step_model = StepCaptioner(default_vocab(1000), resnet="resnet50").eval()
        self.step_model.load_state_dict(self.model.state_dict())
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


def run_generate(s: Setup, n: int, model: ResNetLSTMCaptioner | None = None) -> Maps:
    """Encoder pass + greedy decoding of an ``n``-word caption (no maps)."""
    model = model or s.model
    with torch.no_grad():
        feats = model.encode(model.prepare(s.image))
        ids = model.generate(feats, max_len=n, min_len=n)[0]
    assert " ".join(model.words(ids)) == s.captions[n]
    return None


def run_explain(s: Setup, n: int) -> Any:
    """mmcam: explain every word of the given caption (the result; its pixel maps and boxes
    are made when first read)."""
    return CaptionExplainer(s.model).explain(s.image, s.captions[n])


def run_generate_explain(s: Setup, n: int, model: ResNetLSTMCaptioner | None = None) -> Any:
    """mmcam: generate an ``n``-word caption, then explain every word (the result)."""
    model = model or s.model
    model.min_len = n
    try:
        res = CaptionExplainer(model).explain(s.image, max_len=n)
    finally:
        model.min_len = 0
    assert res.caption == s.captions[n], (res.caption, s.captions[n])
    return res


def run_generate_explain_drawn(s: Setup, n: int, model: ResNetLSTMCaptioner | None = None
                               ) -> Any:
    """:func:`run_generate_explain`, then every map and box made (maps, boxes, sentence)."""
    res = run_generate_explain(s, n, model)
    res.maps, res.boxes, res.sentence_map, res.sentence_box  # noqa: B018
    return res


def maps_of(out: Any) -> Maps:
    """A run's maps: its result's ``maps``, or the maps it returned."""
    return out.maps if hasattr(out, "maps") and not isinstance(out, torch.Tensor) else out


def run_maps_only(s: Setup, n: int) -> Maps:
    """Diagnostic: explain() without boxes and result object (encoder, batched grad, maps)."""
    m = s.model
    ids = m.tokenize(s.captions[n])
    with torch.no_grad():
        feats = m.encode(m.prepare(s.image))
    T = ids.shape[0]
    member = word_membership(m, ids)
    G = layer_gradients(lambda feed, rows: m.score_tokens(feed(feats), rows),
                        ids.expand(member.shape[0], T), member, "copies", 64).G
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
        del feats, lp  # free this word's graph before the next forward
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
        attr = cam.attribute(pixels, target=t, relu_attributions=True).detach()  # see README
        maps.append(LayerAttribution.interpolate(attr, (SIZE, SIZE), "bilinear")[0, 0])
    return torch.stack(maps)


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
    "generate_explain_drawn": ("mmcam: generate + explain, every map and box made",
                               run_generate_explain_drawn),
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
    assert ref.boxes == localize(ref.maps)
    assert ref.maps.shape == (n, SIZE, SIZE) and bool((ref.maps.amax(dim=(1, 2)) > 0).all())
    s.reference[n] = ref.maps
    # the others upsample bilinearly: against mmcam's align="bilinear" maps (the default,
    # "receptive", draws layer4's cells where their receptive fields sit: 32 j + 1/2)
    flat = CaptionExplainer(s.model, align="bilinear").explain(s.image, s.captions[n]).maps
    out = {}
    for name in ("generate_explain", "maps_only", "loop", "captum"):
        want = ref.maps if name == "generate_explain" else flat
        out[name] = relative_difference(maps_of(METHODS[name][1](s, n)), want)
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
    s.reference[n] = run_explain(s, n).maps
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


def measure_memory(method: str, n: int, threads: int | None) -> dict[str, float]:
    """Run :func:`memory_probe` for ``method`` in a fresh Python process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--memory-probe", method, "--words", str(n)]
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


SCALING = ("generate", "explain", "generate_explain", "loop")
Job = tuple[str, int]
Runs = dict[Job, dict[str, list[float]]]


def groups(lengths: list[int], words: int) -> list[list[Job]]:
    """The jobs timed together: at ``words`` every method, at other lengths the scaling set."""
    return [[(m, n) for m in (METHODS if n == words else SCALING)] for n in lengths]


def time_methods(s: Setup, lengths: list[int], words: int, rounds: int, bar: tqdm
                 ) -> tuple[Runs, list[float]]:
    """Wall and CPU seconds of every job over ``rounds`` interleaved rounds, after a warm-up.

    In every round each caption length's jobs run back to back, their order rotated from
    round to round, so ratios between jobs of one round are paired: the other engineers'
    load, which changes from minute to minute, mostly cancels out. CPU time is the whole
    process's (all threads). Also returns the 1-minute load average after each round.
    """
    runs: Runs = {j: {"wall": [], "cpu": []} for g in groups(lengths, words) for j in g}
    loads = []
    for job in runs:
        METHODS[job[0]][1](s, job[1])
        bar.update(1)
    for r in range(rounds):
        for group in groups(lengths, words):
            k = r % len(group)
            for name, n in group[k:] + group[:k]:
                gc.collect()
                w0, c0 = time.perf_counter(), time.process_time()
                METHODS[name][1](s, n)
                runs[(name, n)]["wall"].append(time.perf_counter() - w0)
                runs[(name, n)]["cpu"].append(time.process_time() - c0)
                bar.update(1)
        loads.append(os.getloadavg()[0])
    return runs, loads


def paired(runs: Runs, job: Job, ref: str, kind: str = "wall") -> list[float]:
    """Per-round ratios ``job / (ref at the same length)`` of wall or CPU seconds."""
    return [a / b for a, b in zip(runs[job][kind], runs[(ref, job[1])][kind])]


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


def quartiles(v: list[float]) -> list[float]:
    """25th, 50th and 75th percentiles."""
    return statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3


def table(results: dict) -> str:
    """The markdown tables: methods at ``words`` words, then scaling with caption length.

    Ratios: "paired" is the median of per-round ratios; "best" divides the fastest runs
    (the runs least disturbed by other processes).
    """
    words, t = results["words"], results["times"]
    g0, e0 = t[f"generate@{words}"]["min_s"], t[f"explain@{words}"]["min_s"]
    rows = ["| method | median wall s | fastest wall s | median CPU s | cores used | / generate "
            "paired, best | / explain paired, best | peak RSS increase MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (label, _) in METHODS.items():
        v = t[f"{name}@{words}"]
        mem = results["memory"].get(name)
        m = f"{mem['increase_mib']:.0f}" if mem else "-"
        rows.append(f"| {label} | {v['median_s']:.2f} | {v['min_s']:.2f} | "
                    f"{v['cpu_median_s']:.2f} | {v['cores_used']:.1f} | "
                    f"{v['over_generate'][1]:.2f}, "
                    f"{v['min_s'] / g0:.2f} | {v['over_explain'][1]:.2f}, {v['min_s'] / e0:.2f}"
                    f" | {m} |")
    rows += ["", "| words | generate s | explain s | generate+explain s | per-word loop s | "
             "explain / generate | generate+explain / generate | loop / explain |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in results["lengths"]:
        g, e, ge, lp = (t[f"{m}@{n}"] for m in SCALING)
        rows.append(
            f"| {n} | {g['median_s']:.2f} ({g['min_s']:.2f}) | {e['median_s']:.2f} "
            f"({e['min_s']:.2f}) | {ge['median_s']:.2f} ({ge['min_s']:.2f}) | "
            f"{lp['median_s']:.2f} ({lp['min_s']:.2f}) | {e['over_generate'][1]:.2f} "
            f"({e['min_s'] / g['min_s']:.2f}) | {ge['over_generate'][1]:.2f} "
            f"({ge['min_s'] / g['min_s']:.2f}) | {lp['over_explain'][1]:.1f} "
            f"({lp['min_s'] / e['min_s']:.1f}) |")
    rows.append("\nScaling: median wall seconds (fastest run); ratios: paired median "
                "(fastest / fastest). Cores used: median CPU seconds / wall seconds.")
    return "\n".join(rows)


TARGET = ("generate", "generate_explain", "generate_explain_drawn")


def run_encode(s: Setup, n: int) -> None:
    """The encoder pass alone (prepare + encode)."""
    with torch.no_grad():
        s.model.encode(s.model.prepare(s.image))


# timed in the same rounds, to split the time: the encoder alone, and explaining a given
# caption (encoder + the explaining work, no generation)
PARTS = {"encode": run_encode, "explain": run_explain}
# timed in the same rounds: the same jobs with the faster generation (:class:`StepCaptioner`)
STEP = {"step_generate": lambda s, n: run_generate(s, n, s.step_model),
        "step_generate_explain": lambda s, n: run_generate_explain(s, n, s.step_model),
        "step_generate_explain_drawn":
            lambda s, n: run_generate_explain_drawn(s, n, s.step_model)}


def target_phase(s: Setup, n: int, rounds: int, threads: int, bar: tqdm) -> dict[str, Any]:
    """The :data:`TARGET` and :data:`PARTS` jobs at ``n`` words with ``threads`` torch
    threads: ``rounds`` rounds after two warm-up runs of each, the order rotated every
    round; per job the wall and CPU seconds, per explain job of :data:`TARGET` the quartiles
    of its per-round ratios to generate."""
    torch.set_num_threads(threads)
    jobs = {name: METHODS[name][1] for name in TARGET} | STEP | PARTS
    order = list(jobs)
    for _ in range(2):
        for fn in jobs.values():
            fn(s, n)
    runs: dict[str, dict[str, list[float]]] = {j: {"wall": [], "cpu": []} for j in jobs}
    loads = []
    for r in range(rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            jobs[name](s, n)
            runs[name]["wall"].append(time.perf_counter() - w0)
            runs[name]["cpu"].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
        bar.update(1)
    out: dict[str, Any] = {"threads": threads, "rounds": rounds,
                           "load_avg_1min_after_each_round": loads}
    for name in jobs:
        v = runs[name]
        out[name] = {"wall_median_s": statistics.median(v["wall"]),
                     "cpu_median_s": statistics.median(v["cpu"]),
                     "wall_s": v["wall"], "cpu_s": v["cpu"]}
        base = {**dict.fromkeys(TARGET[1:], "generate"),
                **dict.fromkeys(list(STEP)[1:], "step_generate")}.get(name)
        if base:
            for kind in ("cpu", "wall"):
                ratios = [a / b for a, b in zip(v[kind], runs[base][kind])]
                out[name][f"{kind}_over_generate"] = quartiles(ratios)
    return out


def target(args: argparse.Namespace) -> None:
    """``--target``: the ratio to generating alone, 1 thread (CPU s), then 2 (wall s)."""
    n = args.words
    load_before = os.getloadavg()
    s = Setup([n])
    diffs = check(s, n)
    with tqdm(total=2 * args.repeats, desc="bench_caption --target", unit="round") as bar:
        phases = [target_phase(s, n, args.repeats, t, bar) for t in (1, 2)]
    one = phases[0]
    results = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "setup": {"model": "ResNetLSTMCaptioner(resnet50, embed=hidden=512, vocab 1000+3)",
                  "weights": f"random, torch.manual_seed({SEED})",
                  "image": "chelsea.png 224x224", "caption": s.captions[n]},
        "words": n, "max_relative_difference_to_mmcam": diffs,
        "ratios": "[q1, median, q3] of per-round ratios to generate (same round)",
        "one_thread_cpu": one, "two_threads_wall": phases[1],
        "target": 1.3,
        "result_returned_cpu_ratio_1thread": one["generate_explain"]["cpu_over_generate"][1],
        "maps_and_boxes_made_cpu_ratio_1thread":
            one["generate_explain_drawn"]["cpu_over_generate"][1],
        "result_returned_wall_ratio_2threads":
            phases[1]["generate_explain"]["wall_over_generate"][1],
        "maps_and_boxes_made_wall_ratio_2threads":
            phases[1]["generate_explain_drawn"]["wall_over_generate"][1],
        "faster_generation": "StepCaptioner: the same weights, generate() with oneDNN off",
    }
    for key, job in (("result_returned", "step_generate_explain"),
                     ("maps_and_boxes_made", "step_generate_explain_drawn")):
        results[f"{key}_cpu_ratio_1thread_faster_generation"] = \
            one[job]["cpu_over_generate"][1]
        results[f"{key}_wall_ratio_2threads_faster_generation"] = \
            phases[1][job]["wall_over_generate"][1]
    out = Path(args.out or ROOT / "benchmarks/results/caption_target.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    r = results
    print(f"{n} words, medians of {args.repeats} paired rounds, ratio to generating alone "
          f"(target <= 1.3):\n"
          f"  result returned:         {r['result_returned_cpu_ratio_1thread']:.3f} (CPU s, "
          f"1 thread)  {r['result_returned_wall_ratio_2threads']:.3f} (wall s, 2 threads)\n"
          f"  + every map and box made: {r['maps_and_boxes_made_cpu_ratio_1thread']:.3f} "
          f"(CPU s, 1 thread)  {r['maps_and_boxes_made_wall_ratio_2threads']:.3f} (wall s, "
          f"2 threads)\n  generate alone: {one['generate']['cpu_median_s']:.3f} CPU s "
          f"(1 thread); load average before {load_before[0]:.2f}, after "
          f"{r['load_avg_after'][0]:.2f}; wrote {out}")
    f = {k: r[f"{k}_faster_generation"] for k in (
        "result_returned_cpu_ratio_1thread", "result_returned_wall_ratio_2threads",
        "maps_and_boxes_made_cpu_ratio_1thread", "maps_and_boxes_made_wall_ratio_2threads")}
    print("  the same against the faster generation (StepCaptioner, oneDNN off while "
          "generating):\n"
          f"  result returned:         {f['result_returned_cpu_ratio_1thread']:.3f} (CPU s, "
          f"1 thread)  {f['result_returned_wall_ratio_2threads']:.3f} (wall s, 2 threads)\n"
          f"  + every map and box made: {f['maps_and_boxes_made_cpu_ratio_1thread']:.3f} "
          f"(CPU s, 1 thread)  {f['maps_and_boxes_made_wall_ratio_2threads']:.3f} (wall s, "
          "2 threads)")
    for ph in phases:  # the explaining work = explain(given caption) - encoder, medians
        med = {j: ph[j]["wall_median_s"] * 1e3
               for j in ("encode", "explain", "generate", "step_generate")}
        print(f"  {ph['threads']} thread(s), wall medians: encoder {med['encode']:.0f} ms, "
              f"generate {med['generate']:.0f} ms (faster: {med['step_generate']:.0f} ms), "
              "explain a given caption "
              f"{med['explain']:.0f} ms (explaining work {med['explain'] - med['encode']:.0f} ms)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (after a warm-up)")
    p.add_argument("--words", type=int, default=16, help="caption length of the main table")
    p.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/caption_speed.json (caption_target.json "
                        "with --target)")
    p.add_argument("--target", action="store_true",
                   help="only issue 8's ratio to generating alone (1 then 2 threads)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    p.add_argument("--report", metavar="JSON", help="print the tables of a saved run and exit")
    args = p.parse_args(argv)
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return
    if args.target:
        target(args)
        return
    args.out = args.out or str(ROOT / "benchmarks/results/caption_speed.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.words)))
        return

    load_before = os.getloadavg()
    lengths = sorted(set(args.lengths) | {args.words})
    s = Setup(lengths)
    diffs = {n: check(s, n) for n in lengths}
    mem_methods = [] if args.no_memory else [m for m in METHODS if m != "localize"]
    n_jobs = sum(len(g) for g in groups(lengths, args.words))
    with tqdm(total=n_jobs * (args.repeats + 1) + len(mem_methods), desc="bench_caption",
              unit="run") as bar:
        runs, loads = time_methods(s, lengths, args.words, args.repeats, bar)
        memory = {}
        for m in mem_methods:
            memory[m] = measure_memory(m, args.words, args.threads)
            bar.update(1)
    times = {}
    for job, v in runs.items():
        times[f"{job[0]}@{job[1]}"] = {
            "median_s": statistics.median(v["wall"]), "min_s": min(v["wall"]),
            "max_s": max(v["wall"]), "cpu_median_s": statistics.median(v["cpu"]),
            "cores_used": statistics.median(c / w for c, w in zip(v["cpu"], v["wall"])),
            "over_generate": quartiles(paired(runs, job, "generate")),
            "over_explain": quartiles(paired(runs, job, "explain")),
            "cpu_over_generate": quartiles(paired(runs, job, "generate", "cpu")),
            "cpu_over_explain": quartiles(paired(runs, job, "explain", "cpu")),
            "wall_s": v["wall"], "cpu_s": v["cpu"]}
    w = args.words
    results = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "load_avg_1min_after_each_round": loads,
        "setup": {"model": "ResNetLSTMCaptioner(resnet50, embed=hidden=512, vocab 1000+3)",
                  "weights": f"random, torch.manual_seed({SEED})", "image": "chelsea.png 224x224",
                  "captions": s.captions},
        "repeats": args.repeats, "words": w, "lengths": lengths,
        "max_relative_difference_to_mmcam": diffs,
        "ratios": "over_generate / over_explain: quartiles [q1, median, q3] of per-round "
                  "(paired) wall-time ratios; cpu_over_*: the same with CPU seconds",
        "times": times,
        "memory": memory,
        "memory_method": "fresh subprocess per method, warm-up run, VmHWM reset via "
                         "/proc/self/clear_refs, increase = VmHWM - VmRSS before the run; "
                         "MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=131072",
    }
    results["targets"] = {
        "explain_over_generate": times[f"explain@{w}"]["over_generate"][1],
        "explain_over_generate_target": 1.5,
        "loop_over_explain": times[f"loop@{w}"]["over_explain"][1],
        "loop_over_explain_target": 10.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    tg = results["targets"]  # paired medians
    print(f"\nat {w} words (medians of paired per-round ratios): explain/generate = "
          f"{tg['explain_over_generate']:.2f} (target <= 1.5), loop/explain = "
          f"{tg['loop_over_explain']:.1f} (target >= 10); torch threads "
          f"{torch.get_num_threads()}; load average before {load_before[0]:.2f}, after "
          f"{results['load_avg_after'][0]:.2f}; wrote {out}")


if __name__ == "__main__":
    main()
