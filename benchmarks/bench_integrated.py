"""What the integrated method costs: explaining with ``method="integrated"`` (``steps`` path
points, each one gradient pass) against HiResCAM (one pass), on the shipped models and on BLIP
at base size (random weights, a caption of 16 words).

    python benchmarks/bench_integrated.py [--repeats 5] [--steps 4 16] [--device cpu|cuda]
        [--out benchmarks/results/integrated_cost.json]

Median wall seconds of one ``explained`` call (the caption or answer given, so generation is
not timed); the captioner at its default layer and at encoder.2, where the suite recommends it.
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="a small BLIP (smoke run)")
    p.add_argument("--out", default=None)
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
    out = Path(args.out or ROOT / "benchmarks/results" / (
        "integrated_cost.json" if args.device == "cpu" else f"integrated_cost_{args.device}.json"))
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
