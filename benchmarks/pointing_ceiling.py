"""How often a map on the explained layer's grid *can* point at the questioned objects.

    python benchmarks/pointing_ceiling.py [MODEL ...] [--n 200] [--seed 2000000]
        [--out benchmarks/results/pointing_ceiling.json]

A map drawn from an (h,w) grid peaks where a cell is drawn (at its receptive-field centre, the
suite's ``receptive`` drawing), so the pointing game (peak within ``slack`` px of the object,
Chebyshev) can only be won when some cell's peak lands that close to the object. For the
suite's VQA questions (:func:`mmcam.suite.vqa_questions` on the suite's scenes) this script
draws every one-hot grid through the model's own geometry, exactly as the suite draws a map,
and counts the questions for which at least one cell hits: the ceiling of pointing for any
method on that grid. Next to it, the suite's pointing at its recommended setting (HiResCAM,
contrast, receptive) on the same questions, and how many of its misses were out of reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmcam

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import mmcam  # noqa: E402
from mmcam import VQAExplainer  # noqa: E402
from mmcam.evaluation import pointing_hit  # noqa: E402
from mmcam.scenes import generate  # noqa: E402
from mmcam.suite import SEED, _union, vqa_questions  # noqa: E402


def reachable(cell_maps: torch.Tensor, mask: np.ndarray, slack: int) -> bool:
    """Whether any of the one-hot cell maps (K,H,W) points at ``mask``."""
    return any(pointing_hit(m, mask, slack) for m in cell_maps)


def ceiling(model: str, n: int, seed: int, slack: int = 4) -> dict:
    adapter = mmcam.load_model(model)
    ex = VQAExplainer(adapter, method="hirescam", score="contrast")
    scenes = generate(n, seed=seed)
    cells: dict[tuple, torch.Tensor] = {}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # n, reach, hit, miss out
    for scene in tqdm(scenes, desc=model):
        for _, q, _, qtype, objs in vqa_questions(scene):
            e = ex.explained(scene.image, q)
            grid = tuple(e.layer_maps.shape[-2:])
            key = (tuple(scene.image.size), grid)
            if key not in cells:
                h, w = grid
                eye = torch.eye(h * w).reshape(h * w, h, w)
                cells[key] = e.geometry.to_image(eye, e.cell)
            mask, _ = _union([scene.objects[j] for j in objs], scene.image.size)
            can = reachable(cells[key], mask, slack)
            m = e.geometry.to_image(e.layer_maps[:1], e.cell)[0]
            hit = pointing_hit(m, mask, slack)
            c = counts[qtype]
            c[0] += 1
            c[1] += can
            c[2] += hit
            c[3] += (not hit) and (not can)
    out = {}
    for kind, (k, can, hit, out_of_reach) in sorted(counts.items()):
        out[kind] = {"n": k, "ceiling": can / k, "pointing": hit / k,
                     "misses": k - hit, "misses_out_of_reach": out_of_reach}
    return {"grid": [list(k[1]) for k in cells], "by_type": out}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["shapes-vqa", "shapes-blip-vqa"])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default="benchmarks/results/pointing_ceiling.json")
    args = p.parse_args(argv)
    report: dict = {"command": "python benchmarks/pointing_ceiling.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "n": args.n, "seed": args.seed,
        "slack": 4, "models": {}}
    for model in args.models:
        t0 = time.perf_counter()
        report["models"][model] = ceiling(model, args.n, args.seed)
        report["models"][model]["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for model, r in report["models"].items():
        print(f"{model} (grid {r['grid']}, {r['wall_s']} s)")
        for kind, v in r["by_type"].items():
            print(f"  {kind:9s} n={v['n']:4d} ceiling {v['ceiling']:.3f} pointing "
                  f"{v['pointing']:.3f} misses {v['misses']} of which out of reach "
                  f"{v['misses_out_of_reach']}")


if __name__ == "__main__":
    main()
