"""Where do the balanced captioner's "circle" maps go? A follow-up of the captioner bias study.

    python benchmarks/bias_caption_probe.py [--cache /tmp/balanced_captioner.pt]
        [--out benchmarks/results/bias_study_captioner]

``mmcam bias-study --model captioner`` found that the balanced captioner's Grad-CAM of the
word "circle" puts 0.5-0.7 times chance on the large circle it names right, while its
"square" maps sit on the square (4.8 times chance). This retrains that balanced model (the
study's settings; its final training loss is checked against ``bias_study.json``) and, on the
1000 unbiased test scenes, for the shape word of ``"a large {color} {true shape}"``, splits
each map's mass over the large object, the small objects and the background (each object's
visible mask grown by 4 px; the cue box counted apart), and finds where its peak lies, for:

- Grad-CAM of log p(w) (the study's map) and of the margin against the other class's word;
- HiResCAM of the contrast score (mmcam's recommended setting for this captioner);
- the captioner's own attention weights when it predicts the word (drawn the same way).

Writes ``bias_caption_probe.json`` into ``--out`` and prints a table. One thread; about 10
minutes (rendering 1 min, training 6 min); ``--cache`` skips the training on later runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmcam

from mmcam import bias  # noqa: E402
from mmcam.bias_caption import train_captioner  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.evaluation import box_mask  # noqa: E402
from mmcam.models.captioner import build  # noqa: E402
from mmcam.models.evaluate import EVAL_SEED  # noqa: E402
from mmcam.models.hub import wrap  # noqa: E402
from mmcam.scenes import IMAGE_SIZE, generate  # noqa: E402

SLACK = 4  # px around each object's visible mask
SETTINGS = {  # name -> CaptionExplainer keyword arguments (None: the model's attention)
    "Grad-CAM, log p(w)": {"method": "gradcam", "score": "logprob"},
    "Grad-CAM, y_w - y_other": {"method": "gradcam", "score": "versus"},
    "HiResCAM, contrast": {"method": "hirescam", "score": "contrast"},
    "attention": None,
}


def balanced_model(cfg: bias.StudyConfig, cache: Path | None) -> tuple[torch.nn.Module, dict,
                                                                         float]:
    """The study's balanced captioner, trained as ``run_study`` trains it or loaded from
    ``cache``; returns (model, config, final training loss)."""
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        model = build(saved["config"])
        model.load_state_dict(saved["state"])
        return model.eval(), saved["config"], saved["final_loss"]
    train = bias.binary_scenes(cfg.n_train, cfg.seed, cfg.classes, progress=True)
    cue = bias.assign_cue(train.labels, bias.balanced_rates(cfg), cfg.seed, 1)
    images = bias.stamp_cue(train.images, cue, cfg.cue_box)
    model, config, facts = train_captioner(images, train, cfg, "balanced", True)
    if cache is not None:
        torch.save({"config": config, "state": model.state_dict(),
                    "final_loss": facts["final_loss"]}, cache)
    return model, config, facts["final_loss"]


def regions(test: bias.SceneSet, i: int, cue: bool, box: tuple[int, int, int, int]
            ) -> dict[str, torch.Tensor]:
    """Bool (H,W) masks of test image ``i``: the large object, the small objects (each grown
    by :data:`SLACK` px, the large one first), the cue box if the image has it, and the rest.
    Disjoint; together the whole image."""
    scene = generate(1, EVAL_SEED, start=test.indices[i], one_large=True)[0]

    def grow(mask) -> torch.Tensor:
        return bias.dilate(torch.from_numpy(mask.copy()), SLACK)

    cue_box = box_mask(box, (IMAGE_SIZE, IMAGE_SIZE)) if cue else torch.zeros(
        IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    large = grow(next(o for o in scene.objects if o.size == "large").mask) & ~cue_box
    small = torch.zeros_like(large)
    for o in scene.objects:
        if o.size == "small":
            small |= grow(o.mask)
    small &= ~large & ~cue_box
    return {"large object": large, "small objects": small, "cue box": cue_box,
            "background": ~(large | small | cue_box)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                   / "benchmarks/results/bias_study_captioner")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = bias.StudyConfig(model="captioner")
    model, config, loss = balanced_model(cfg, args.cache)
    study = json.loads((args.out / "bias_study.json").read_text())
    want = study["models"]["balanced"]["training"]["final_loss"]
    if loss != want:
        raise SystemExit(f"final loss {loss} differs from the study's {want}: not its model")
    adapter = wrap(model, config)
    test = bias.binary_scenes(cfg.n_test, EVAL_SEED, cfg.classes, keep_masks=True,
                              progress=True)
    test_cue = bias.assign_cue(test.labels, (0.5, 0.5), cfg.seed, 2)
    images = bias.stamp_cue(test.images, test_cue, cfg.cue_box)
    a, b = cfg.classes
    explainers = {name: CaptionExplainer(adapter, **kw, versus={a: b, b: a})
                  for name, kw in SETTINGS.items() if kw is not None}
    sums: dict[str, dict[str, dict[str, list[float]]]] = {}
    areas: dict[str, dict[str, list[float]]] = {}
    for i in tqdm(range(len(images)), desc="maps"):
        img = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        shape = cfg.classes[int(test.labels[i])]
        caption = f"a large {test.colors[i]} {shape}"
        masks = regions(test, i, bool(test_cue[i]), cfg.cue_box)
        done = {name: next(iter(ex.explained([img], [caption])))
                for name, ex in explainers.items()}
        drawn = {name: e.maps[3] for name, e in done.items()}
        e = done["Grad-CAM, log p(w)"]
        with torch.no_grad():  # the attention that predicts word 3, drawn as the maps are
            alpha = adapter.attention(adapter.encode(adapter.prepare(img)),
                                      adapter.tokenize(caption)[None])[0, 3]
        drawn["attention"] = e.geometry.to_image(alpha[None], e.cell)[0]
        for name, m in drawn.items():
            m = m.clamp(min=0)
            total = float(m.sum())
            row = sums.setdefault(shape, {}).setdefault(name, {k: [] for k in [
                *masks, "peak in"]})
            area = areas.setdefault(shape, {k: [] for k in masks})
            if name == "attention":  # once per image
                for k, mask in masks.items():
                    area[k].append(float(mask.float().mean()))
            if total <= 0:
                continue
            for k, mask in masks.items():
                row[k].append(float(m[mask].sum()) / total)
            peak = int(m.flatten().argmax())
            where = next(k for k, mask in masks.items() if bool(mask.flatten()[peak]))
            row["peak in"].append(where)
    out: dict[str, object] = {"settings": {"slack_px": SLACK, "final_loss": loss,
                                           "n_test": cfg.n_test, "seed": cfg.seed},
                              "by_true_class": {}}
    for shape, per in sums.items():
        out["by_true_class"][shape] = {"area share": {
            k: round(sum(v) / len(v), 4) for k, v in areas[shape].items()}}
        for name, row in per.items():
            peaks = row.pop("peak in")
            out["by_true_class"][shape][name] = {  # all-zero maps are left out
                "n": len(peaks),
                "mass share": {k: round(sum(v) / len(v), 4) if v else None
                               for k, v in row.items()},
                "peak in": {k: round(peaks.count(k) / len(peaks), 4) if peaks else None
                            for k in row},
            }
    out["seconds"] = round(time.time() - t0, 1)
    (args.out / "bias_caption_probe.json").write_text(json.dumps(out, indent=2) + "\n")
    for shape, per in out["by_true_class"].items():
        print(f"{shape:7s} area share {per['area share']}")
        for name, r in per.items():
            if name == "area share":
                continue
            print(f"{shape:7s} {name:26s} mass {r['mass share']}  peak {r['peak in']}")


if __name__ == "__main__":
    main()
