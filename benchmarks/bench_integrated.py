"""What the integrated method costs: explaining with ``method="integrated"`` (``steps`` path
points, each one gradient pass) against HiResCAM (one pass), on the shipped models and on BLIP
at base size (random weights, a caption of 16 words).

    python benchmarks/bench_integrated.py [--repeats 5] [--steps 4 16] [--device cpu|cuda]
        [--out benchmarks/results/integrated_cost.json]

Median wall seconds of one ``explained`` call (the caption or answer given, so generation is
not timed); the captioner at its default layer and at encoder.2, where the suite recommends it.
Also completeness against the path points: for shapes-captioner at encoder.2 on one scene, each
word's map before the ReLU summed, against y(A) - y(A0) scored on the pixels and on their
mean-color image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mmcam  # noqa: E402
from benchmarks import bench_engine  # noqa: E402
from benchmarks.bench_hf import blip_base, timed  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.evaluation import mean_fill  # noqa: E402
from mmcam.pipeline import pixels_of  # noqa: E402
from mmcam.scenes import generate  # noqa: E402
from mmcam.vqa import VQAExplainer  # noqa: E402


def cases(device: str, tiny: bool) -> list[tuple[str, object]]:
    """(name, explain()) for each model and layer; each explains the same rows."""
    scene = generate(1, seed=2000000)[0]
    out = []
    cap = mmcam.load_model("shapes-captioner", device=device)
    text = scene.captions[0]
    for layer in (None, "encoder.2"):
        out.append((f"shapes-captioner{'' if layer is None else ' @ ' + layer}",
                    lambda kw, layer=layer: CaptionExplainer(cap, layer=layer, **kw).explained(
                        [scene.image], [text])))
    for name in ("shapes-vqa", "shapes-blip-vqa"):
        ad = mmcam.load_model(name, device=device)
        q = scene.questions[0][0]
        out.append((name, lambda kw, ad=ad, q=q: VQAExplainer(ad, **kw).explained(
            scene.image, q)))
    blip = blip_base(tiny)
    blip.model.to(device)
    words = " ".join(f"w{i}" for i in range(16))
    out.append(("BLIP base (random), 16 words, last block",
                lambda kw: CaptionExplainer(blip, **kw).explained([scene.image], [words])))
    return out


def completeness(points: list[int]) -> dict:
    """Per m: each word's sum of (A - A0) * Gbar (the map before its ReLU), and the gap
    y(A) - y(A0) it approximates, for shapes-captioner at encoder.2."""
    cap = mmcam.load_model("shapes-captioner")
    scene, text = generate(3, seed=5)[0], "the shape is yellow"
    out: dict = {"caption": text, "layer": "encoder.2", "sums": {}}
    for m in points:
        e = CaptionExplainer(cap, method="integrated", layer="encoder.2", steps=m).explained(
            [scene.image], [text])[0]
        out["sums"][m] = (e.A[None] * e.G).sum(dim=(1, 2, 3)).tolist()
    px = pixels_of(e.inputs)
    with torch.no_grad():
        lp = cap.score_tokens(cap.encode(torch.cat([px, mean_fill(px)])),
                              e.rows.ids[:1].expand(2, -1))
    y = lp @ e.rows.coefs.T  # (2 images, words)
    out["gap"] = (y[0] - y[1]).tolist()
    out["words"] = list(e.rows.info[1])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="a small BLIP (smoke run)")
    p.add_argument("--out", default=None)
    p.add_argument("--points", type=int, nargs="+", default=[4, 16, 64, 256],
                   help="path points for the completeness check")
    args = p.parse_args(argv)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    bench_engine.DEVICE = torch.device(args.device)  # what machine() reports
    res = {"command": " ".join(["python", "benchmarks/bench_integrated.py",
                                *(argv if argv is not None else sys.argv[1:])]),
           "machine": bench_engine.machine(), "cases": {}}
    for name, run in cases(args.device, args.tiny):
        row = {"hirescam_s": timed(lambda run=run: run({"method": "hirescam"}), args.repeats,
                                   sync)["median"]}
        for s in args.steps:
            t = timed(lambda run=run, s=s: run({"method": "integrated", "steps": s}),
                      args.repeats, sync)["median"]
            row[f"integrated_{s}_s"] = t
            row[f"integrated_{s}_over_hirescam"] = t / row["hirescam_s"]
        res["cases"][name] = row
        print(f"{name:45s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    res["completeness"] = c = completeness(args.points)
    for m, sums in c["sums"].items():
        print(f"completeness m={m:4d}: " + "  ".join(
            f"{w} {v:+.3f}/{g:+.3f}" for w, v, g in zip(c["words"], sums, c["gap"])))
    out = Path(args.out or ROOT / "benchmarks/results" / (
        "integrated_cost.json" if args.device == "cpu" else f"integrated_cost_{args.device}.json"))
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
