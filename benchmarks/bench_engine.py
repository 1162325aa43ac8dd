"""Issue-8 engine benchmark: strategies, explained layer, several images per call.

    python benchmarks/bench_engine.py [--repeats 5] [--out benchmarks/results/engine.json]

Measures (median and min wall seconds of ``--repeats`` runs, after one warm-up):
1. ResNet-50 + LSTM captioner of ``demos/custom_captioner.py`` (random weights, 224 px,
   16-word caption): generate alone; generate + explain all words; explain at ``layer4``
   (the encode output) and at ``layer3`` with both strategies; the per-word loop at each layer.
2. A transformer captioner (ViT-S/16 tower, 197 tokens, 6-layer GPT-2-like decoder with
   cross-attention, vocabulary 8000, random weights): explain 16 words with copies, vjp and
   the per-word loop; which strategy ``auto`` picks for each model.
3. Images per second, one by one vs ``explain_batch``, for the shipped shapes-captioner and
   the ResNet-50 + LSTM captioner.
Every timed mmcam result is first checked against the per-word loop (max relative difference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_caption import TokenLogProbs, WordTarget, minmax  # noqa: E402
from demos.custom_captioner import ResNetLSTMCaptioner, default_vocab  # noqa: E402
from mmcam.cam import gradcam  # noqa: E402
from mmcam.caption import CaptionExplainer, word_membership  # noqa: E402
from mmcam.geometry import Geometry  # noqa: E402
from mmcam.layers import Tokens, resolve_layer  # noqa: E402

WORDS = 16


def photo(size: int = 224) -> Image.Image:
    import skimage

    p = Path(skimage.__file__).parent / "data" / "chelsea.png"
    return Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)


class ViTGPTCaptioner(nn.Module):
    """ViT-S/16 tower (torchvision VisionTransformer) + a 6-layer causal transformer decoder
    cross-attending its 197 tokens: a whole-model adapter with a token layout."""

    layer = "vit.encoder.layers[-1]"
    layout = Tokens(prefix=1)

    def __init__(self, vocab: int = 8000, layers: int = 6) -> None:
        super().__init__()
        import torchvision

        self.vit = torchvision.models.VisionTransformer(224, 16, 12, 6, 384, 1536)
        self.embed = nn.Embedding(vocab, 384)
        self.pos = nn.Parameter(torch.randn(1, 64, 384) * 0.02)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(384, 6, 1536, dropout=0.1, batch_first=True), layers)
        self.out = nn.Linear(384, vocab)

    def prepare(self, image: Image.Image):
        from torchvision.transforms import functional as TF

        g = Geometry.identity(image.size).resize((224, 224))
        return TF.to_tensor(image.convert("RGB").resize((224, 224)))[None], g

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vit._process_input(pixels)
        x = torch.cat([self.vit.class_token.expand(x.shape[0], -1, -1), x], 1)
        return self.vit.encoder(x)

    def score_tokens(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        mem = self.tokens(pixels)
        mem = mem.expand(ids.shape[0], -1, -1) if mem.shape[0] == 1 else mem
        inp = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], 1)
        T = inp.shape[1]
        mask = torch.triu(torch.full((T, T), float("-inf"), device=ids.device), 1)
        h = self.decoder(self.embed(inp) + self.pos[:, :T], mem, tgt_mask=mask)
        return self.out(h).float().log_softmax(-1).gather(2, ids[..., None])[..., 0]

    @torch.no_grad()
    def generate(self, pixels, max_len=20, beam_size=1):
        raise NotImplementedError("the benchmark explains a given caption")

    def tokenize(self, text: str) -> torch.Tensor:
        return torch.tensor([int(w) for w in text.split()])

    def words(self, ids: torch.Tensor) -> list[str]:
        return [str(int(i)) for i in ids]


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return {"median": statistics.median(ts), "min": min(ts), "runs": ts}


def paired(base: Callable[[], object], other: Callable[[], object], repeats: int) -> dict:
    """Alternate ``base`` and ``other``; the median of the per-pair ratios other / base is
    robust to slow drifts in machine load."""
    base(), other()
    a, b = [], []
    for _ in range(repeats):
        for fn, ts in ((base, a), (other, b)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
    return {"base": a, "other": b, "ratio_median": statistics.median(y / x for x, y in zip(a, b)),
            "base_median": statistics.median(a), "other_median": statistics.median(b)}


def loop_maps(module: nn.Module, layer: str, layout, y_of_word: Callable[[int], torch.Tensor],
              n: int) -> torch.Tensor:
    """The naive way: per word, one forward of the whole model and one backward."""
    target = resolve_layer(module, layer)
    maps = []
    for i in range(n):
        held = {}

        def hook(m, inp, out, held=held):
            if isinstance(out, dict):  # a transformers ModelOutput: its first field
                out = next(iter(out.values()))
            held["A"] = out
            out.retain_grad()

        h = target.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                y = y_of_word(i)
        finally:
            h.remove()
        A = held["A"]
        (g,) = torch.autograd.grad(y, A)
        grid_a, grid_g = layout.to_grid(A.detach()), layout.to_grid(g)
        maps.append(gradcam(grid_a, grid_g))
    return torch.cat(maps).cpu()


def peer_maps(m: ResNetLSTMCaptioner, layer: str, px: torch.Tensor, ids: torch.Tensor,
              peer: str) -> torch.Tensor:
    """What users run today, one call per word at ``layer``: captum's ``LayerGradCam``
    (layer-grid maps (n,h,w)) or pytorch-grad-cam's ``GradCAM`` (its min-max scaled maps
    resized to the input, which call ``loss.backward()`` and so also fill every parameter's
    ``.grad``; dropped afterwards)."""
    forward = TokenLogProbs(m, ids[None])
    module = resolve_layer(m, layer)
    n = ids.shape[0]
    with torch.backends.cudnn.flags(enabled=DEVICE.type != "cuda"):
        if peer == "captum":
            from captum.attr import LayerGradCam

            cam = LayerGradCam(forward, module)
            return torch.cat([cam.attribute(px, target=t, relu_attributions=True).detach()[0]
                              for t in range(n)]).cpu()
        from pytorch_grad_cam import GradCAM

        with GradCAM(model=forward, target_layers=[module]) as cam:
            maps = [torch.from_numpy(cam(input_tensor=px, targets=[WordTarget(t)])[0])
                    for t in range(n)]
    for q in m.parameters():
        q.grad = None
    return torch.stack(maps)


def check_peer(got: torch.Tensor, ref: torch.Tensor, peer: str) -> float:
    """Largest difference to the loop's layer maps ``ref``: relative for captum; for
    pytorch-grad-cam, absolute against ``ref`` upsampled to 224 and min-max scaled."""
    if peer == "captum":
        return rel(got, ref)
    up = torch.nn.functional.interpolate(ref[:, None], (224, 224), mode="bilinear",
                                         align_corners=False)[:, 0]
    return float((got - minmax(up)).abs().max())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def bench_lstm(repeats: int, bar: tqdm) -> dict:
    from mmcam.layers import Conv

    torch.manual_seed(0)
    m = ResNetLSTMCaptioner(default_vocab(1000), resnet="resnet50", min_len=WORDS).eval()
    m.to(DEVICE)
    img = photo()
    px = m.prepare(img).to(DEVICE)
    with torch.no_grad():
        ids = m.generate(m.encode(px), max_len=WORDS)[0]
    caption = " ".join(m.words(ids))
    member = word_membership(m, ids.cpu()).to(DEVICE)
    ids = ids.to(DEVICE)
    out: dict = {"caption_words": len(ids)}

    def gen() -> None:
        with torch.no_grad():
            m.generate(m.encode(m.prepare(img).to(DEVICE)), max_len=WORDS)

    out["generate"] = timed(gen, repeats)
    bar.update()
    for layer in ("encoder.layer4", "encoder.layer3"):
        def y(i, layer=layer):  # cuDNN's RNN backward needs train mode: off on CUDA
            with torch.backends.cudnn.flags(enabled=DEVICE.type != "cuda"):
                return (m.score_tokens(m.encode(px), ids[None])[0] * member[i]).sum()

        ref = loop_maps(m, layer, Conv(), y, len(ids))
        key = "layer4" if layer.endswith("4") else "layer3"
        out[f"loop_{key}"] = timed(lambda y=y, layer=layer: loop_maps(
            m, layer, Conv(), y, len(ids)), max(1, repeats // 2))
        bar.update()
        for peer in ("captum", "pytorch_gradcam"):
            out[f"check_{key}_{peer}"] = check_peer(peer_maps(m, layer, px, ids, peer), ref,
                                                    peer)
            assert out[f"check_{key}_{peer}"] <= 1e-4, (key, peer, out[f"check_{key}_{peer}"])
            out[f"{peer}_{key}"] = timed(lambda layer=layer, peer=peer: peer_maps(
                m, layer, px, ids, peer), max(1, repeats // 2))
            bar.update()
        for strategy in ("copies", "vjp"):
            ex = CaptionExplainer(m, layer=None if key == "layer4" else layer,
                                  strategy=strategy)
            got = ex.explain(img, caption).layer_maps
            out[f"check_{key}_{strategy}"] = rel(got, ref)
            out[f"explain_{key}_{strategy}"] = timed(lambda ex=ex: ex.explain(img, caption),
                                                     repeats)
            bar.update()
    ex = CaptionExplainer(m)
    out["auto"] = ex.strategy
    out["generate_explain"] = timed(lambda: ex.explain(img, max_len=WORDS), repeats)
    out["generate_vs_generate_explain"] = paired(gen, lambda: ex.explain(img, max_len=WORDS),
                                                 2 * repeats)
    bar.update()
    return out


def bench_transformer(repeats: int, bar: tqdm) -> dict:
    torch.manual_seed(0)
    m = ViTGPTCaptioner().eval().to(DEVICE)
    img = photo()
    caption = " ".join(str(int(i)) for i in torch.randint(1, 8000, (WORDS,)))
    ids = m.tokenize(caption).to(DEVICE)
    px = m.prepare(img)[0].to(DEVICE)
    out: dict = {}
    ref = loop_maps(m, m.layer, m.layout, lambda i: m.score_tokens(px, ids[None])[0, i],
                    WORDS)
    out["loop"] = timed(lambda: loop_maps(
        m, m.layer, m.layout, lambda i: m.score_tokens(px, ids[None])[0, i], WORDS),
        max(1, repeats // 2))
    bar.update()
    for strategy in ("copies", "vjp"):
        ex = CaptionExplainer(m, strategy=strategy, chunk_size=16)
        out[f"check_{strategy}"] = rel(ex.explain(img, caption).layer_maps, ref)
        out[f"explain_{strategy}"] = timed(lambda ex=ex: ex.explain(img, caption), repeats)
        bar.update()
    out["auto"] = CaptionExplainer(m).strategy
    return out


def bench_batch(repeats: int, bar: tqdm) -> dict:
    from mmcam import load_model, scenes

    out = {}
    if DEVICE.type == "cpu":  # the shipped reference models run on the CPU
        cap = load_model("shapes-captioner")
        imgs = [s.image for s in scenes.generate(16, seed=5)]
        ex = CaptionExplainer(cap)
        one = timed(lambda: [ex.explain(i) for i in imgs], repeats)
        batch = timed(lambda: ex.explain_batch(imgs), repeats)
        out["shapes-captioner"] = {"images": len(imgs), "one_by_one": one, "batched": batch,
                                   "images_per_s_one": len(imgs) / one["median"],
                                   "images_per_s_batched": len(imgs) / batch["median"]}
    bar.update()
    torch.manual_seed(0)
    m = ResNetLSTMCaptioner(default_vocab(1000), resnet="resnet50", min_len=12).eval()
    m.to(DEVICE)
    base = photo(320)
    n = 4 if DEVICE.type == "cpu" else 32
    imgs = [base.crop((k % 5 * 20, k // 5 * 10, k % 5 * 20 + 224, k // 5 * 10 + 224))
            for k in range(n)]
    ex = CaptionExplainer(m)
    one = timed(lambda: [ex.explain(i, max_len=12) for i in imgs], repeats)
    batch = timed(lambda: ex.explain_batch(imgs, max_len=12), repeats)
    out["resnet50-lstm"] = {"images": len(imgs), "one_by_one": one, "batched": batch,
                            "images_per_s_one": len(imgs) / one["median"],
                            "images_per_s_batched": len(imgs) / batch["median"]}
    bar.update()
    return out


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "device": str(DEVICE),
            "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine.json"))
    p.add_argument("--only", choices=["lstm", "transformer", "batch"], default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (models moved there)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":  # float32 means float32 on both sides of each comparison
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    results: dict = {"machine_before": machine()}
    parts = {"lstm": (bench_lstm, 12), "transformer": (bench_transformer, 3),
             "batch": (bench_batch, 2)}
    todo = [args.only] if args.only else list(parts)
    with tqdm(total=sum(parts[k][1] for k in todo), desc="bench_engine") as bar:
        for k in todo:
            results[k] = parts[k][0](args.repeats, bar)
    results["machine_after"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(report(results))


def report(r: dict) -> str:
    lines = []
    if "lstm" in r:
        x = r["lstm"]
        g = x["generate"]["median"]
        lines += ["ResNet-50 + LSTM, 16 words (median s, ratio to generate):",
                  f"  generate                 {g:.3f}",
                  f"  generate + explain       {x['generate_explain']['median']:.3f}  "
                  f"{x['generate_explain']['median'] / g:.2f}x  (auto = {x['auto']})",
                  f"  paired ratio, median of {len(x['generate_vs_generate_explain']['base'])}"
                  f" alternating pairs: {x['generate_vs_generate_explain']['ratio_median']:.2f}x"]
        for key in ("layer4", "layer3"):
            loop = x[f"loop_{key}"]["median"]
            for s in ("copies", "vjp"):
                t = x[f"explain_{key}_{s}"]["median"]
                lines.append(f"  explain {key} {s:6s}    {t:.3f}  loop {loop:.3f} = "
                             f"{loop / t:.1f}x faster; max rel diff {x[f'check_{key}_{s}']:.1e}")
            best = min(x[f"explain_{key}_{s}"]["median"] for s in ("copies", "vjp"))
            for peer in ("captum", "pytorch_gradcam"):
                if f"{peer}_{key}" in x:
                    t = x[f"{peer}_{key}"]["median"]
                    lines.append(f"  {peer} {key} per word {t:.3f} = {t / best:.1f}x mmcam's "
                                 f"time; max diff {x[f'check_{key}_{peer}']:.1e}")
    if "transformer" in r:
        x = r["transformer"]
        loop = x["loop"]["median"]
        lines.append("ViT-S + 6-layer decoder, 16 words:")
        for s in ("copies", "vjp"):
            t = x[f"explain_{s}"]["median"]
            lines.append(f"  explain {s:6s}   {t:.3f}  loop {loop:.3f} = {loop / t:.1f}x "
                         f"faster; max rel diff {x[f'check_{s}']:.1e}")
        lines.append(f"  auto picks {x['auto']}")
    if "batch" in r:
        for name, x in r["batch"].items():
            lines.append(f"{name}: {x['images']} images, one by one "
                         f"{x['images_per_s_one']:.1f} img/s, explain_batch "
                         f"{x['images_per_s_batched']:.1f} img/s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
