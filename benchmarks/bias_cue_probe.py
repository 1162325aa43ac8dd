"""Why does Grad-CAM miss the cue of the bias study's biased model? Experiments that test it.

    python benchmarks/bias_cue_probe.py [--cache /tmp/biased.pt]
        [--out benchmarks/results/bias_study]

Retrains the biased model of ``mmcam bias-study`` with its default settings (the same
scenes, cue, seed and recipe; deterministic: its test accuracy and cue-flip rate are checked
against ``bias_study.json``) and measures, on the 1000 unbiased test scenes:

- **Grad-CAM by layer**: the share of the map's mass on the cue box (and the box grown by one
  8 px cell) for the predicted class on the 500 cue images, at the default layer and earlier
  conv blocks (smaller receptive fields);
- **the square maps**: the same on the 500 images without the cue (mostly predicted square):
  if the unmarked corner were evidence for "square", those maps would sit on it;
- **input gradients**: the share of ``|d (y_circle - y_square) / d pixels|`` (summed over
  colors) on the cue box, on the cue images;
- **occlusion**: on the images without the cue, how often an 8x8 patch makes the model say
  "circle", by the patch's color at the cue's place and by the place of a cyan patch;
- **the CAM's change**: the model is conv features, global average pooling and a linear layer,
  so its margin is the mean of an unrectified class activation map: where that map changes
  when the cue is added, and its values there before and after;
- **receptive field**: where the default layer's cell with the most map mass looks: the share of
  the gradient of its activations (summed over channels) w.r.t. the input that falls on the
  cue box.

Writes ``bias_cue_probe.json`` into ``--out`` and prints it. One thread; about 13 minutes
(rendering 2 min, training 4-5 min, Grad-CAM at five layers 5 min); ``--cache`` skips the
training on later runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmcam

from mmcam import bias  # noqa: E402
from mmcam.classify import ClassExplainer  # noqa: E402
from mmcam.evaluation import box_mask  # noqa: E402
from mmcam.models import encoder  # noqa: E402
from mmcam.models.evaluate import EVAL_SEED  # noqa: E402
from mmcam.models.hub import build_model, wrap  # noqa: E402
from mmcam.scenes import IMAGE_SIZE  # noqa: E402

PATCH_COLORS = {"cyan (the cue)": bias.CUE_RGB, "gray": (128, 128, 128), "black": (0, 0, 0),
                "white": (255, 255, 255), "red": (230, 30, 30), "blue": (30, 30, 230)}
CYAN_PLACES = {"top-left (the cue's place)": bias.CUE_XY, "top-right": (116, 4),
               "centre": (60, 60), "bottom-left": (4, 116), "bottom-right": (116, 116)}


def biased_model(cfg: bias.StudyConfig, cache: Path | None, train: bias.SceneSet | None
                 ) -> tuple[torch.nn.Module, dict, float]:
    """The study's biased model, trained as ``run_study`` trains it or loaded from ``cache``;
    with its config and final training loss."""
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        model = build_model(saved["config"])
        model.load_state_dict(saved["state"])
        return model.eval(), saved["config"], saved["final_loss"]
    assert train is not None
    cue = bias.assign_cue(train.labels, bias.biased_rates(cfg), cfg.seed, 0)
    images = bias.stamp_cue(train.images, cue, cfg.cue_box)
    model, config, facts = bias.train_classifier(images, train.labels, cfg, "biased", True)
    if cache is not None:
        torch.save({"config": config, "state": model.state_dict(),
                    "final_loss": facts["final_loss"]}, cache)
    return model.eval(), config, facts["final_loss"]


def gradcam_maps(explainer: ClassExplainer, images: torch.Tensor, targets: torch.Tensor,
                 desc: str) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(images), 50), desc=desc, leave=False):
        px = encoder.pixels_from_uint8(images[i:i + 50])
        out.append(explainer.explain_pixels(px, targets=targets[i:i + 50, None])["maps"][:, 0])
    return torch.cat(out)


@torch.no_grad()
def cam_change(model: torch.nn.Module, images: torch.Tensor, corner: int = 5
               ) -> dict[str, float]:
    """The model is conv features -> global average pool -> linear, so its margin is the mean
    over cells of the class activation map M(x, y) = sum_c (w_circle - w_square)_c A_c(x, y)
    (Zhou et al.'s CAM, which Grad-CAM equals up to a factor here) plus a constant. For the
    same ``images`` with and without the cue: where the margin's change dM comes from (the
    share of the summed dM and of sum |dM| in the ``corner`` x ``corner`` top-left cells,
    0..8*corner px: 5 x 5 are the cells whose 47 px receptive field reaches the cue box), and
    M's mean there before and after, unrectified (Grad-CAM shows only max(M, 0))."""
    w = model.fc.weight[:2]
    d = w[0] - w[1]
    cue = bias.stamp_cue(images, torch.ones(len(images), dtype=torch.bool),
                         bias.StudyConfig().cue_box)
    maps = []
    for x in (images, cue):
        a = model.features(encoder.pixels_from_uint8(x))
        maps.append(torch.einsum("c,nchw->nhw", d, a).double())
    before, after = maps
    dm = after - before
    inside = torch.zeros(dm.shape[1:], dtype=torch.bool)
    inside[:corner, :corner] = True
    return {
        "corner_cells": f"{corner}x{corner} of {dm.shape[2]}x{dm.shape[1]}",
        "corner_area_share": round(float(inside.double().mean()), 6),
        "margin_change_mean": round(float(dm.mean()), 4),
        "share_of_margin_change_in_corner": round(float(dm[:, inside].sum() / dm.sum()), 4),
        "share_of_abs_change_in_corner": round(
            float(dm[:, inside].abs().sum() / dm.abs().sum()), 4),
        "corner_M_mean_without_cue": round(float(before[:, inside].mean()), 4),
        "corner_M_mean_with_cue": round(float(after[:, inside].mean()), 4),
        "corner_M_positive_share_with_cue": round(float((after[:, inside] > 0).double().mean()),
                                                  4),
        "elsewhere_M_mean": round(float(after[:, ~inside].mean()), 4),
    }


def stamp(images: torch.Tensor, xy: tuple[int, int], rgb: tuple[int, int, int],
          size: int) -> torch.Tensor:
    out = images.clone()
    x, y = xy
    out[:, :, y:y + size, x:x + size] = torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=None, help="save/load the trained model here")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bias_study"))
    p.add_argument("--n-train", type=int, default=bias.StudyConfig.n_train,
                   help="other than the study's: a quick trial (not the study's model)")
    p.add_argument("--steps", type=int, default=bias.StudyConfig.steps)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = bias.StudyConfig(n_train=args.n_train, steps=args.steps)
    need_train = args.cache is None or not args.cache.exists()
    train = bias.binary_scenes(cfg.n_train, cfg.seed, cfg.classes, progress=True) \
        if need_train else None
    test = bias.binary_scenes(cfg.n_test, EVAL_SEED, cfg.classes, keep_masks=True,
                              progress=True)
    model, config, final_loss = biased_model(cfg, args.cache, train)
    test_cue = bias.assign_cue(test.labels, (0.5, 0.5), cfg.seed, 2)
    with_cue = bias.stamp_cue(test.images, test_cue, cfg.cue_box)
    pred = bias.predict(model, with_cue).argmax(1)
    table = bias.accuracy_table(pred, test.labels, test_cue, cfg.classes)
    study = json.loads((args.out / "bias_study.json").read_text())["models"]["biased"]
    same = (table["accuracy"] == study["accuracy"] and table["groups"] == study["groups"]
            and final_loss == study["training"]["final_loss"])  # the training, bit for bit

    cue_mask = box_mask(cfg.cue_box, (IMAGE_SIZE, IMAGE_SIZE))

    def where(maps: torch.Tensor, sel: torch.Tensor) -> dict:
        """The study's own measure (``bias.map_shares``): per region (the cue box, the
        object, each grown by one cell) the maps' mean mass share and energy ratio."""
        return bias.map_shares(maps, cue_mask, test.masks[sel] & ~cue_mask)

    adapter = wrap(model, config)
    default = adapter.layer
    sel_cue, sel_free = torch.nonzero(test_cue).flatten(), torch.nonzero(~test_cue).flatten()
    result: dict = {"same_model_as_the_study": same, "final_loss": final_loss,
                    "test_accuracy": table["accuracy"], "default_layer": default}

    by_layer = {}
    stack = default.rsplit(".", 1)[0]  # the conv stack (features.14: its last block's ReLU)
    for layer in (default, *(f"{stack}.{k}" for k in (11, 8, 5, 2))):
        ex = ClassExplainer(adapter, layer=layer, method="gradcam")
        maps = gradcam_maps(ex, with_cue[sel_cue], pred[sel_cue], f"Grad-CAM at {layer}")
        by_layer[layer] = where(maps, sel_cue)
        if layer == default:
            hot = maps.clamp(min=0).mean(0)
    result["gradcam_predicted_on_cue_images_by_layer"] = by_layer

    ex = ClassExplainer(adapter, method="gradcam")
    free_maps = gradcam_maps(ex, with_cue[sel_free], pred[sel_free], "Grad-CAM, no cue")
    result["gradcam_predicted_on_images_without_cue"] = {
        "predicted_square": round(float((pred[sel_free] == 1).float().mean()), 6),
        **where(free_maps, sel_free)}

    grads = []
    for i in range(0, len(sel_cue), 50):
        px = encoder.pixels_from_uint8(with_cue[sel_cue[i:i + 50]]).requires_grad_(True)
        y = model(px)
        (g,) = torch.autograd.grad((y[:, 0] - y[:, 1]).sum(), px)
        grads.append(g.abs().sum(1))
    result["input_gradient_on_cue_images"] = where(torch.cat(grads), sel_cue)

    free = test.images[sel_free]
    base = bias.predict(model, free).argmax(1)
    occl = {"no patch": round(float((base == 0).float().mean()), 6)}
    for name, rgb in PATCH_COLORS.items():
        said = bias.predict(model, stamp(free, bias.CUE_XY, rgb, cfg.cue_size)).argmax(1)
        occl[f"{name} at the cue's place"] = round(float((said == 0).float().mean()), 6)
    for name, xy in CYAN_PLACES.items():
        said = bias.predict(model, stamp(free, xy, bias.CUE_RGB, cfg.cue_size)).argmax(1)
        occl[f"cyan at {name}"] = round(float((said == 0).float().mean()), 6)
    result["says_circle_on_images_without_cue"] = occl

    # receptive field of the default layer's hottest cell (mean circle map on cue images)
    cell = divmod(int(hot.flatten().argmax()), IMAGE_SIZE)
    acts = {}
    layer_module = dict(model.named_modules())[default]
    hook = layer_module.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        px = encoder.pixels_from_uint8(with_cue[sel_cue[:50]]).requires_grad_(True)
        model(px)
        a = acts["a"]
        gy, gx = cell[0] * a.shape[2] // IMAGE_SIZE, cell[1] * a.shape[3] // IMAGE_SIZE
        (g,) = torch.autograd.grad(a[:, :, gy, gx].sum(), px)
    finally:
        hook.remove()
    result["hottest_cell_receptive_field"] = {
        "pixel_of_peak_mean_map": [cell[1], cell[0]], "cell": [gx, gy],
        "grid": [a.shape[3], a.shape[2]],
        "gradient_share": where(g.abs().sum(1), sel_cue[:50]),
        "input_gradient_nonzero_on_cue_box": bool(
            (g.abs().sum(1)[:, cue_mask].sum(1) > 0).all())}
    result["cam_change_when_the_cue_is_added"] = cam_change(model, test.images[sel_cue])
    result["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bias_cue_probe.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
