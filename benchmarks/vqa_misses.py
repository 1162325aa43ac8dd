"""Where a VQA model's answer maps miss: per question type, the pointing rate (also apart for
the answers that are right and those that are wrong) and, for the misses, how far the map's
peak lies from the questioned objects and whether it is on another object (the suite's scenes
and questions, the model's own answers, HiResCAM + contrast, bilinear drawing).

    python benchmarks/vqa_misses.py MODEL [--n 200] [--seed 2000000]
        [--out benchmarks/results/vqa_misses_MODEL.json]

A miss is a peak more than 4 px (the suite's slack) from every pixel of the objects the
question refers to; its distance is the Chebyshev distance to the nearest such pixel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mmcam  # noqa: E402
from mmcam import evaluation as ev  # noqa: E402
from mmcam.pipeline import cam_of  # noqa: E402
from mmcam.scenes import generate  # noqa: E402
from mmcam.suite import SEED, _union, vqa_questions  # noqa: E402
from mmcam.vqa import VQAExplainer  # noqa: E402

SLACK = 4


def misses(model: str, n: int, seed: int) -> dict:
    """Per question type: n, pointing (all, right answers, wrong answers), and the misses'
    distances and on-other-object share."""
    ex = VQAExplainer(mmcam.load_model(model), score="contrast", method="hirescam")
    by: dict[str, list[tuple[bool, int, bool, bool]]] = {}
    for scene in tqdm(generate(n, seed), desc=f"VQA maps of {model}"):
        every, _ = _union(scene.objects, scene.image.size)
        for _, q, truth, qtype, objs in vqa_questions(scene):
            e = ex.explained(scene.image, q)
            right = str(e.rows.info[0]).lower() == truth.lower()
            grid = cam_of("hirescam")(e.A[None], e.G[0:1])[0]
            m = e.geometry.to_image(grid[None], None)[0]
            mask, _ = _union([scene.objects[j] for j in objs], scene.image.size)
            x, y = ev.peak(m)
            ys, xs = np.nonzero(mask)
            dist = int(np.min(np.maximum(abs(xs - x), abs(ys - y))))
            by.setdefault(qtype, []).append(
                (ev.pointing_hit(m, mask, SLACK), dist, bool(every[y, x] and not mask[y, x]),
                 right))
    out = {}
    for qtype, rows in sorted(by.items()):
        miss = [r for r in rows if not r[0]]
        split = {k: [r[0] for r in rows if r[3] == want]
                 for k, want in (("right", True), ("wrong", False))}
        out[qtype] = {
            "n": len(rows), "pointing": float(np.mean([r[0] for r in rows])),
            **{f"n_{k}": len(v) for k, v in split.items()},
            **{f"pointing_{k}": float(np.mean(v)) if v else None for k, v in split.items()},
            "misses": len(miss),
            "miss_distance_px_quartiles": (np.percentile([r[1] for r in miss], [25, 50, 75])
                                           .tolist() if miss else None),
            "misses_on_another_object": float(np.mean([r[2] for r in miss])) if miss else None,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    res = {"command": " ".join(["python", *sys.argv]), "model": args.model, "n": args.n,
           "seed": args.seed, "slack": SLACK, "by_type": misses(args.model, args.n, args.seed)}
    name = Path(args.model).name
    out = Path(args.out or ROOT / f"benchmarks/results/vqa_misses_{name}.json")
    out.write_text(json.dumps(res, indent=1))
    for qtype, r in res["by_type"].items():
        q = r["miss_distance_px_quartiles"]
        parts = "  ".join(f"{k} {r[f'n_{k}']} -> {r[f'pointing_{k}']:.3f}"
                          for k in ("right", "wrong") if r[f"n_{k}"])
        print(f"{qtype:>9s}  n {r['n']:3d}  pointing {r['pointing']:.3f} ({parts})  "
              f"misses {r['misses']:3d}"
              + (f"  distance {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} px, on another object "
                 f"{r['misses_on_another_object']:.2f}" if q else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
