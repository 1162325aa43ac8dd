"""Are a VQA model's pointing misses the model's or the map's? An occlusion test.

    python benchmarks/miss_occlusion.py MODEL [--n 200] [--seed 2000000] [--fill mean]
        [--method hirescam] [--out benchmarks/results/miss_occlusion_MODEL[_METHOD].json]

For every answer the evaluation suite explains (:func:`mmcam.suite.vqa_questions`: per scene
the first question of each type that names objects; the model's own answer; the contrast
score, ``--method`` HiResCAM or another), three regions of equal area ``a`` (the questioned objects'
visible pixels) are filled with ``--fill`` (the suite's deletion fills) and the answer's log p
is scored again:

- ``objects``: the questioned objects' pixels;
- ``map``: the map's top ``a`` pixels (the suite's deletion, at the objects' area);
- ``random``: ``a`` random pixels (one fixed draw per answer).

The drop of each (original log p minus occluded log p) says how much the answer rests on that
region. Where the map misses (its peak more than 4 px from the objects), a map drop at least the
objects' drop means the map found pixels the answer rests on at least as much as on the
questioned objects: the miss is the model's (it answers from elsewhere). A map drop below the
objects' drop, with the objects' drop large, means the map missed evidence the model uses: the
miss is the method's.
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mmcam

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import mmcam  # noqa: E402
from mmcam import evaluation as ev  # noqa: E402
from mmcam.pipeline import pixels_of  # noqa: E402
from mmcam.scenes import generate  # noqa: E402
from mmcam.suite import SEED, _Scorer, _union, vqa_questions  # noqa: E402
from mmcam.vqa import VQAExplainer  # noqa: E402

SLACK = 4
REGIONS = ("objects", "map", "random")


def records(model: str, n: int, seed: int, fill: str, method: str = "hirescam"
            ) -> list[dict]:
    """One record per explained answer: type, right, hit, and the log p drop per region."""
    adapter = mmcam.load_model(model)
    ex = VQAExplainer(adapter, score="contrast", method=method)
    out = []
    for i, scene in enumerate(tqdm(generate(n, seed), desc=f"occluding {model}")):
        for qi, q, truth, qtype, objs in vqa_questions(scene):
            e = ex.explained(scene.image, q)
            m = e.geometry.to_image(e.layer_maps[0:1], e.cell)[0]
            mask, _ = _union([scene.objects[j] for j in objs], scene.image.size)
            mask_t = torch.as_tensor(mask)
            px = pixels_of(e.inputs)[0].detach().float().cpu()
            H, W = px.shape[-2:]
            if mask_t.shape != (H, W):
                raise SystemExit(f"{model}: input {H}x{W} is not the scene's size; this test "
                                 "compares pixel regions and needs them equal")
            a = int(mask_t.sum())
            top = torch.zeros(H * W, dtype=torch.bool)
            top[ev.ranking(m)[:a]] = True
            rnd = torch.zeros(H * W, dtype=torch.bool)
            rnd[torch.randperm(H * W, generator=torch.Generator().manual_seed(
                1000 * i + qi))[:a]] = True
            absent = ev.FILLS[fill](px)
            regions = {"objects": mask_t, "map": top.reshape(H, W),
                       "random": rnd.reshape(H, W)}
            batch = [px] + [torch.where(r[None], absent, px) for r in regions.values()]
            qids = torch.as_tensor(adapter.tokenize_question(q)[0], dtype=torch.long)
            with torch.no_grad():
                s = _Scorer(ex, e, 0, qids)(torch.stack(batch)).double().tolist()
            answer = str(e.rows.info[0])
            out.append({"scene": i, "type": qtype, "answer": answer,
                        "right": answer.lower() == truth.lower(),
                        "hit": ev.pointing_hit(m, mask, SLACK), "area": a,
                        **{f"drop_{k}": s[0] - s[j + 1] for j, k in enumerate(regions)}})
    return out


def table(recs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per question type, for hits and misses: n, mean drop per region, and how often the
    map's drop is at least the objects' drop."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        groups[(r["type"], "hit" if r["hit"] else "miss")].append(r)
        groups[("(all)", "hit" if r["hit"] else "miss")].append(r)
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (kind, part), rs in sorted(groups.items()):
        out[kind][part] = {
            "n": len(rs), "right": float(np.mean([r["right"] for r in rs])),
            **{f"drop_{k}_mean": float(np.mean([r[f"drop_{k}"] for r in rs])) for k in REGIONS},
            "map_drop_at_least_objects": float(np.mean(
                [r["drop_map"] >= r["drop_objects"] for r in rs])),
        }
    return dict(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--fill", choices=sorted(ev.FILLS), default="mean")
    p.add_argument("--method", default="hirescam")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    recs = records(args.model, args.n, args.seed, args.fill, args.method)
    res = {"command": " ".join(["python", "benchmarks/miss_occlusion.py",
                                *(argv if argv is not None else sys.argv[1:])]),
           "model": args.model, "n": args.n, "seed": args.seed, "fill": args.fill,
           "method": args.method,
           "slack": SLACK, "wall_s": round(time.perf_counter() - t0, 1),
           "by_type": table(recs), "records": recs}
    tag = "" if args.method == "hirescam" else f"_{args.method}"
    out = Path(args.out or ROOT / "benchmarks/results"
               / f"miss_occlusion_{Path(args.model).name}{tag}.json")
    out.write_text(json.dumps(res, indent=1))
    for kind, parts in res["by_type"].items():
        for part, v in parts.items():
            print(f"{kind:9s} {part:5s} n={v['n']:4d} right {v['right']:.2f}  drop objects "
                  f"{v['drop_objects_mean']:+.3f} map {v['drop_map_mean']:+.3f} random "
                  f"{v['drop_random_mean']:+.3f}  map>=objects "
                  f"{v['map_drop_at_least_objects']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
