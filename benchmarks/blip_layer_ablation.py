"""Why BLIP is explained at its vision tower's output: Grad-CAM and HiResCAM at the last block
(in front of ``post_layernorm``) in float64 and float32, and at the tower's output.

    python benchmarks/blip_layer_ablation.py [--model shapes-blip] [--n 200] [--seed 2000000]
        [--scores logprob contrast] [--out benchmarks/results/explanations/blip_layer_ablation.json]

For each word of the model's own captions of ``--n`` fresh scenes (the evaluation suite's word
selection: color and shape words naming exactly one object), maps from dense gradients
(``strategy="vjp"``) of three explainers: the last block with the model loaded in float64, the
same in float32, and the tower's output (``vision_model``, the default) in float32; pointing
with 4 px slack (:func:`mmcam.evaluation.pointing_hit`), per word kind, method and score.
The float64 block is the exact reference: in front of a LayerNorm HiResCAM cancels to about eps
of its terms (README), so the float32 block shows what rounding costs, and float64 vs output
what the layer costs. One thread; a tqdm bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mmcam  # noqa: E402
from mmcam import evaluation as ev  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.pipeline import cam_of  # noqa: E402
from mmcam.scenes import generate  # noqa: E402
from mmcam.suite import _union, word_kind  # noqa: E402

BLOCK = "vision_model.encoder.layers[-1]"
METHODS = ("gradcam", "hirescam")


def run(model: str, n: int, seed: int, score: str) -> dict[str, dict[str, float]]:
    """Pointing per word kind and ``method@explainer`` for one score."""
    ad32 = mmcam.load_model(model)
    ad64 = mmcam.load_model(model, dtype=torch.float64)
    exs = {"block64": CaptionExplainer(ad64, strategy="vjp", layer=BLOCK, score=score),
           "block32": CaptionExplainer(ad32, strategy="vjp", layer=BLOCK, score=score),
           "output32": CaptionExplainer(ad32, strategy="vjp", score=score)}
    names = [f"{m}@{k}" for m in METHODS for k in exs]
    hits: dict[str, dict[str, list[bool]]] = {k: {v: [] for v in names}
                                              for k in ("color", "shape")}
    for scene in tqdm(generate(n, seed=seed), desc=f"blip layer ablation, {score}"):
        first = exs["output32"].explained([scene.image])[0]
        words = first.rows.info[1]
        es = {k: first if k == "output32" else
              ex.explained([scene.image], [" ".join(words)])[0] for k, ex in exs.items()}
        for r, w in enumerate(words):
            kind = word_kind(w)
            objs = scene.objects_named(w.strip(".,")) if kind in hits else []
            if len(objs) != 1:
                continue
            mask, _ = _union(objs, scene.image.size)
            for k, e in es.items():
                for m in METHODS:
                    lm = cam_of(m)(e.A[None], e.G[r:r + 1])[0]
                    pix = e.geometry.to_image(lm[None].float(), e.cell)[0]
                    hits[kind][f"{m}@{k}"].append(ev.pointing_hit(pix, mask, 4))
    return {k: {"n": len(d[names[0]])} | {v: round(float(np.mean(x)), 3) for v, x in d.items()}
            for k, d in hits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-blip")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=2_000_000)
    p.add_argument("--scores", nargs="+", default=["logprob", "contrast"])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/explanations/"
                                           "blip_layer_ablation.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = {s: run(args.model, args.n, args.seed, s) for s in args.scores}
    report = {"command": "python benchmarks/blip_layer_ablation.py " + " ".join(sys.argv[1:]),
              "model": args.model, "n_scenes": args.n, "seed": args.seed, "slack_px": 4,
              "seconds": round(time.perf_counter() - t0, 1), "pointing": results}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
