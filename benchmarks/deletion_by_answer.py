"""Why deletion fails for some VQA answer kinds: deletion at 10% split by the model's answer.

    python benchmarks/deletion_by_answer.py [MODEL] [--n 200] [--seed 2000000]
        [--fills mean blur] [--out benchmarks/results/deletion_by_answer.json]

The evaluation suite's VQA records (:func:`mmcam.suite.vqa_records`: per scene the first
question of each type that names objects, the model's own answer, HiResCAM + contrast with
receptive drawing, the suite's recommended setting) with deletion on every scene, once per
fill. Per question type and answer: how often deleting the map's top 10% lowers the explained
score more than deleting a random 10% (the suite's "deletion > random"), the mean drop of the
explained score (contrast: the answer's logit minus the mean logit of its alternatives) for
the map's and the random 10%, and how often the map's deletion *raises* the score (drop < 0).
The figures are the suite's own; nothing is recomputed here.
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

import mmcam  # noqa: E402
from mmcam.scenes import generate  # noqa: E402
from mmcam.suite import SEED, vqa_records  # noqa: E402


def table(recs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per question type, per answer: n, deletion > random, mean drops, share raised."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        if "deletion_drop" in r:
            groups[(r["kind"], r["answer"])].append(r)
            groups[(r["kind"], "(all)")].append(r)
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (kind, answer), rs in sorted(groups.items()):
        n = len(rs)
        out[kind][answer] = {
            "n": n,
            "deletion_beats_random": sum(r["deletion_drop"] > r["random_drop"] for r in rs) / n,
            "map_drop_mean": sum(r["deletion_drop"] for r in rs) / n,
            "random_drop_mean": sum(r["random_drop"] for r in rs) / n,
            "map_deletion_raises_score": sum(r["deletion_drop"] < 0 for r in rs) / n,
            "pointing": sum(bool(r["hit"]) for r in rs) / n,
            "correct": sum(bool(r["correct"]) for r in rs) / n,
        }
    return dict(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="shapes-vqa")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--fills", nargs="+", default=["mean", "blur"])
    p.add_argument("--out", default="benchmarks/results/deletion_by_answer.json")
    args = p.parse_args(argv)
    adapter = mmcam.load_model(args.model)
    scenes = generate(args.n, seed=args.seed)
    report: dict = {"command": "python benchmarks/deletion_by_answer.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "model": args.model, "n": args.n,
        "seed": args.seed, "setting": "hirescam, contrast, receptive", "fills": {}}
    for fill in args.fills:
        t0 = time.perf_counter()
        recs = vqa_records(adapter, scenes, ["hirescam"], ["contrast"], ["receptive"], 4,
                           args.n, True, fill)
        report["fills"][fill] = {"wall_s": round(time.perf_counter() - t0, 1),
                                 "by_type_and_answer": table(recs)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for fill, part in report["fills"].items():
        print(f"fill {fill} ({part['wall_s']} s)")
        for kind, answers in part["by_type_and_answer"].items():
            for answer, v in answers.items():
                print(f"  {kind:9s} {answer:7s} n={v['n']:4d}"
                      f" del>rand {v['deletion_beats_random']:.2f}"
                      f"  drop map {v['map_drop_mean']:+.3f} random {v['random_drop_mean']:+.3f}"
                      f"  raised {v['map_deletion_raises_score']:.2f}  pointing {v['pointing']:.2f}"
                      f"  correct {v['correct']:.2f}")


if __name__ == "__main__":
    main()
