"""BLIP at base size (ViT-B/16 at 384 px, 12-layer BERT decoder, random weights): generate a
caption, explain all its words with both strategies, and the per-word loop.

    python benchmarks/bench_hf.py [--words 16] [--repeats 3] [--out benchmarks/results/hf.json]

Median wall seconds; the maps of both strategies are checked against the loop first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_engine import loop_maps, machine, photo, rel  # noqa: E402
from mmcam.adapters.hf import HFCaptioner  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402


def blip_base() -> HFCaptioner:
    """BlipConfig() defaults (the BLIP-base architecture) with random weights and a BERT
    tokenizer whose vocabulary is made up here (no hub)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BlipConfig()
    model = transformers.BlipForConditionalGeneration(cfg).eval()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(2000)]
    words += ["[DEC]"]
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tok.add_special_tokens({"bos_token": "[DEC]"})
    cfg.text_config.bos_token_id = model.config.text_config.bos_token_id = len(words) - 1
    proc = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 384, "width": 384}),
        tokenizer=tok)
    return HFCaptioner(model, proc)


def timed(fn, repeats: int) -> dict:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median": statistics.median(ts), "min": min(ts), "runs": ts}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--words", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hf.json"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ad = blip_base()
    img = photo(384)
    inputs, _ = ad.prepare(img)
    caption = " ".join(f"w{i}" for i in torch.randint(0, 2000, (args.words,)).tolist())
    ids = ad.tokenize(caption)
    prefix = torch.tensor(ad._prefix())
    full = torch.cat([prefix, ids])[None]
    k = len(prefix)
    model = ad.model
    out: dict = {"machine_before": machine(), "words": args.words,
                 "threads": torch.get_num_threads()}

    def y(i):
        logits = model(pixel_values=inputs["pixel_values"], input_ids=full,
                       use_cache=False).logits
        return logits[0, k - 1 + i].float().log_softmax(-1)[ids[i]]

    with tqdm(total=4, desc="bench_hf") as bar:
        out["generate"] = timed(lambda: ad.generate(inputs, max_len=args.words,
                                                    min_len=args.words), args.repeats)
        bar.update()
        ref = loop_maps(model, ad.layer, ad.layout, y, len(ids))
        out["ref_max"] = float(ref.max())  # the comparisons below mean something only if > 0
        out["loop"] = timed(lambda: loop_maps(model, ad.layer,
                                              ad.layout, y, len(ids)), 1)
        bar.update()
        for strategy in ("vjp", "copies"):
            ex = CaptionExplainer(ad, strategy=strategy, chunk_size=16)
            out[f"check_{strategy}"] = rel(ex.explain(img, caption).layer_maps, ref)
            out[f"explain_{strategy}"] = timed(lambda ex=ex: ex.explain(img, caption),
                                               args.repeats)
            bar.update()
    out["machine_after"] = machine()
    Path(args.out).write_text(json.dumps(out, indent=2))
    g = out["generate"]["median"]
    print(f"BLIP base, {args.words} words, {os.cpu_count()} cores: generate {g:.2f} s")
    for s in ("vjp", "copies"):
        t = out[f"explain_{s}"]["median"]
        print(f"  explain {s:6s} {t:.2f} s = {t / g:.2f}x generate, loop "
              f"{out['loop']['median']:.2f} s = {out['loop']['median'] / t:.1f}x slower; "
              f"max rel diff {out[f'check_{s}']:.1e}")


if __name__ == "__main__":
    main()
