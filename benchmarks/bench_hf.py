"""BLIP at base size (ViT-B/16 at 384 px, 12-layer BERT decoder, random weights): generate a
caption, explain all its words with both strategies, and the per-word loop.

    python benchmarks/bench_hf.py [--words 16] [--repeats 3] [--device cpu|cuda] [--out ...]

Median wall seconds; the maps of every strategy (readers, vjp, copies), of pytorch-grad-cam
and of captum are checked against the loop first; then time against caption length. All at
the last vision block (``LAYER``), which the peers can hook; BLIP's default layer, the tower's
output, is a ``ModelOutput`` they cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import loop_maps, machine, photo, rel  # noqa: E402
from mmcam.adapters.hf import HFCaptioner  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.layers import resolve_layer  # noqa: E402

LAYER = "vision_model.encoder.layers[-1]"


def blip_base(tiny: bool = False) -> HFCaptioner:
    """BlipConfig() defaults (the BLIP-base architecture) with random weights and a BERT
    tokenizer whose vocabulary is made up here (no hub); ``tiny``: a small one for a smoke
    run of this script."""
    import transformers

    torch.manual_seed(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128)
    cfg = transformers.BlipConfig(vision_config=dict(small, image_size=64, patch_size=16),
                                  text_config=small) if tiny else transformers.BlipConfig()
    model = transformers.BlipForConditionalGeneration(cfg).eval()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(2000)]
    words += ["[DEC]"]
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tok.add_special_tokens({"bos_token": "[DEC]"})
    cfg.text_config.bos_token_id = model.config.text_config.bos_token_id = len(words) - 1
    proc = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={
            "height": cfg.vision_config.image_size, "width": cfg.vision_config.image_size}),
        tokenizer=tok)
    ad = HFCaptioner(model, proc)
    # explained at the last vision block, the layer whose output is a tensor that the peers
    # (pytorch-grad-cam, captum) can hook; BLIP's default is the tower's output, a ModelOutput
    ad.layer = LAYER
    return ad


def timed(fn, repeats: int, sync=lambda: None) -> dict:
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return {"median": statistics.median(ts), "min": min(ts), "runs": ts}


def word_logprobs(ad: HFCaptioner, x: torch.Tensor, full: torch.Tensor, ids: torch.Tensor,
                  k: int) -> torch.Tensor:
    """(1, n) log p of each caption token (ids) given the image x and the teacher-forced
    prefix + caption ``full``, the caption starting at position k: the peers' model."""
    logits = ad.model(pixel_values=x, input_ids=full, use_cache=False).logits
    lp = logits[0, k - 1: k - 1 + len(ids)].float().log_softmax(-1)
    return lp.gather(-1, ids[:, None].to(lp.device))[:, 0][None]


def pgc_maps(ad: HFCaptioner, pv: torch.Tensor, full: torch.Tensor, ids: torch.Tensor,
             k: int) -> torch.Tensor:
    """pytorch-grad-cam's GradCAM, one target per word, with a reshape_transform from the
    577 tokens to a 24x24 grid (its own min-max scaling and resize to the input)."""
    from pytorch_grad_cam import GradCAM

    class Words(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = ad.model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return word_logprobs(ad, x, full, ids, k)

    def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
        s = int((t.shape[1] - 1) ** 0.5)
        return t[:, 1:].reshape(t.shape[0], s, s, t.shape[2]).permute(0, 3, 1, 2)

    layer = resolve_layer(ad.model, ad.layer)
    with GradCAM(model=Words(), target_layers=[layer], reshape_transform=tokens_to_grid) as cam:
        return torch.stack([torch.from_numpy(cam(input_tensor=pv, targets=[
            lambda out, i=i: out[i]])[0]) for i in range(len(ids))])


def captum_maps(ad: HFCaptioner, pv: torch.Tensor, full: torch.Tensor, ids: torch.Tensor,
                k: int) -> torch.Tensor:
    """captum's LayerGradCam, one call (forward + backward) per word. captum averages the
    gradients over every dim after dim 1, so it is given the layer's tokens as a conv grid:
    a forward hook on the layer sends the 576 patch tokens through an ``nn.Identity`` as
    (1, 768, 24, 24) and back (an exact identity), and captum explains that module."""
    from captum.attr import LayerGradCam

    tap = torch.nn.Identity()

    def as_grid(module, inputs, out):
        t = out[0] if isinstance(out, tuple) else out
        s = int((t.shape[1] - 1) ** 0.5)
        g = tap(t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], s, s))
        t = torch.cat([t[:, :1], g.flatten(2).transpose(1, 2)], dim=1)
        return (t, *out[1:]) if isinstance(out, tuple) else t

    def words(x: torch.Tensor) -> torch.Tensor:
        return word_logprobs(ad, x, full, ids, k)

    h = resolve_layer(ad.model, ad.layer).register_forward_hook(as_grid)
    try:
        cam = LayerGradCam(words, tap)
        return torch.cat([cam.attribute(pv, target=i, relu_attributions=True)[:, 0].detach()
                          for i in range(len(ids))]).cpu()
    finally:
        h.remove()


def pgc_like(maps: torch.Tensor, size: int) -> torch.Tensor:
    """mmcam's layer maps scaled and resized as pytorch-grad-cam does: min-max scaling
    (``/ (1e-7 + max)``), a bilinear resize, and the same scaling again."""
    def scale(m: torch.Tensor) -> torch.Tensor:
        m = m - m.amin(dim=(1, 2), keepdim=True)
        return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))

    up = torch.nn.functional.interpolate(scale(maps.double())[:, None], size=(size, size),
                                         mode="bilinear", align_corners=False)[:, 0]
    return scale(up).float()


@dataclass
class Bench:
    """One BLIP, one photo, one caption, and how to time on the device."""

    ad: HFCaptioner
    img: Any
    inputs: dict
    caption: str
    ids: torch.Tensor
    full: torch.Tensor
    k: int
    repeats: int
    cuda: bool

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def y(self, i: int) -> torch.Tensor:
        """log p of caption token i (the per-word loop's score)."""
        logits = self.ad.model(pixel_values=self.inputs["pixel_values"], input_ids=self.full,
                               use_cache=False).logits
        return logits[0, self.k - 1 + i].float().log_softmax(-1)[self.ids[i]]

    def peak(self, fn) -> float | None:
        """Peak GPU memory (MiB) of ``fn()``; None on CPU."""
        if not self.cuda:
            return None
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated() / 2**20


def random_caption(n: int, g: torch.Generator) -> str:
    return " ".join(f"w{i}" for i in torch.randint(0, 2000, (n,), generator=g).tolist())


def measure(b: Bench, words: int, bar: tqdm) -> dict:
    """Generate, the loop, the three strategies and pytorch-grad-cam, maps checked first."""
    ad, out = b.ad, {}
    out["generate"] = timed(lambda: ad.generate(b.inputs, max_len=words, min_len=words),
                            b.repeats, b.sync)
    bar.update()
    ref = loop_maps(ad.model, ad.layer, ad.layout, b.y, len(b.ids)).cpu()
    out["ref_max"] = float(ref.max())  # the comparisons below mean something only if > 0
    out["loop"] = timed(lambda: loop_maps(ad.model, ad.layer, ad.layout, b.y, len(b.ids)), 1,
                        b.sync)
    bar.update()
    for strategy in ("readers", "vjp", "copies"):
        ex = CaptionExplainer(ad, strategy=strategy, chunk_size=16)
        out[f"check_{strategy}"] = rel(ex.explain(b.img, b.caption).layer_maps, ref)
        out[f"explain_{strategy}"] = timed(lambda ex=ex: ex.explain(b.img, b.caption),
                                           b.repeats, b.sync)
        out[f"peak_mib_{strategy}"] = b.peak(lambda ex=ex: ex.explain(b.img, b.caption))
        bar.update()
    try:
        pv = b.inputs["pixel_values"]
        got = pgc_maps(ad, pv, b.full, b.ids, b.k)
        out["check_pytorch_grad_cam"] = rel(pgc_like(ref, pv.shape[-1]), got)
        out["pytorch_grad_cam"] = timed(lambda: pgc_maps(ad, pv, b.full, b.ids, b.k), 1, b.sync)
    except ImportError as err:
        out["pytorch_grad_cam"] = f"not installed: {err}"
    bar.update()
    try:
        got = captum_maps(ad, pv, b.full, b.ids, b.k)
        out["check_captum"] = rel(got, ref)
        out["captum"] = timed(lambda: captum_maps(ad, pv, b.full, b.ids, b.k), 1, b.sync)
    except ImportError as err:
        out["captum"] = f"not installed: {err}"
    bar.update()
    return out


def by_length(b: Bench, lengths: list[int], g: torch.Generator, bar: tqdm) -> dict:
    """Generate, readers and vjp seconds for captions of each length."""
    out = {}
    for n in lengths:
        cap = random_caption(n, g)
        row = {"generate": timed(lambda n=n: b.ad.generate(b.inputs, max_len=n, min_len=n), 1,
                                 b.sync)["median"]}
        for strategy in ("readers", "vjp"):
            ex = CaptionExplainer(b.ad, strategy=strategy, chunk_size=16)
            row[strategy] = timed(lambda ex=ex, cap=cap: ex.explain(b.img, cap), 1,
                                  b.sync)["median"]
        out[n] = row
        bar.update()
    return out


def summary(out: dict) -> None:
    gen = out["generate"]["median"]
    where = out["gpu"] or f"{out['threads']} threads, {os.cpu_count()} cores"
    print(f"BLIP base, {out['words']} words, {where}: generate {gen:.2f} s, "
          f"loop {out['loop']['median']:.2f} s")
    for s in ("readers", "vjp", "copies"):
        t = out[f"explain_{s}"]["median"]
        peak = out[f"peak_mib_{s}"]
        print(f"  explain {s:7s} {t:.2f} s = {t / gen:.2f}x generate, loop "
              f"{out['loop']['median'] / t:.1f}x slower; max rel diff {out[f'check_{s}']:.1e}"
              + (f"; peak {peak:.0f} MiB" if peak is not None else ""))
    for peer in ("pytorch_grad_cam", "captum"):
        if isinstance(out[peer], dict):
            print(f"  {peer} {out[peer]['median']:.2f} s, max rel diff "
                  f"{out[f'check_{peer}']:.1e}")
    for n, row in out.get("by_length", {}).items():
        print(f"  {n:3d} words: generate {row['generate']:.2f} s, readers {row['readers']:.2f} s,"
              f" vjp {row['vjp']:.2f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--words", type=int, default=16)
    p.add_argument("--lengths", default="4,8,16,32", help="caption lengths for the growth "
                   "table (empty: skip)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hf.json"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--tiny", action="store_true", help="a small BLIP: a smoke run")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ad = blip_base(args.tiny)
    ad.model.to(dev)
    img = photo(384)
    inputs, _ = ad.prepare(img)
    g = torch.Generator().manual_seed(1)
    caption = random_caption(args.words, g)
    ids = ad.tokenize(caption)
    prefix = torch.tensor(ad._prefix())
    b = Bench(ad, img, inputs, caption, ids, torch.cat([prefix, ids])[None].to(dev),
              len(prefix), args.repeats, dev.type == "cuda")
    out: dict = {"machine_before": machine(), "device": str(dev),
                 "gpu": torch.cuda.get_device_name() if b.cuda else None, "words": args.words,
                 "threads": torch.get_num_threads()}
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    with tqdm(total=7 + len(lengths), desc="bench_hf") as bar:
        out |= measure(b, args.words, bar)
        if lengths:
            out["by_length"] = by_length(b, lengths, g, bar)
    out["machine_after"] = machine()
    Path(args.out).write_text(json.dumps(out, indent=2))
    summary(out)


if __name__ == "__main__":
    main()
