"""Pointing game of the shipped captioner on fresh scenes: is a word's map on its object?

    python benchmarks/grounding.py [--n 200] [--seed 424242] [--methods gradcam hirescam]

Prints a markdown table and writes benchmarks/results/grounding.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmcam

import torch  # noqa: E402

import mmcam  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.grounding import pointing_game  # noqa: E402
from mmcam.scenes import generate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=424242)
    p.add_argument("--model", default="shapes-captioner")
    p.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "hirescam"])
    p.add_argument("--out", default="benchmarks/results/grounding.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    adapter = mmcam.load_model(args.model)
    scenes = generate(args.n, seed=args.seed)
    rows = []
    for caption in ("reference", "generated"):
        for method in args.methods:
            r = pointing_game(CaptionExplainer(adapter, method=method), scenes, caption=caption)
            rows.append(r)
    print(f"\n{args.n} fresh scenes (seed {args.seed}), model {args.model}\n")
    print("| caption | method | words | hit rate | color words | shape words | chance |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['caption']} | {r['method']} | {r['all']['words']} | "
            f"{r['all']['hit_rate']:.3f} | {r['color']['hit_rate']:.3f} | "
            f"{r['shape']['hit_rate']:.3f} | {r['all']['chance']:.3f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "seed": args.seed, "model": args.model,
                               "results": rows}, indent=2))


if __name__ == "__main__":
    main()
