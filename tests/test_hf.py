"""Hugging Face captioners: tiny random models built from configs, saved with
``save_pretrained``, loaded through ``mmcam.load_model`` as a user's checkpoint would be.

Expected maps come from a per-token loop written here directly against the transformers
class: one forward with a hook on the layer and one backward per caption token.
"""

from __future__ import annotations

import pytest
import torch
from test_engine import (
    assert_maps_close,
    cam_by_hand,
    hooks_left,
    leaf_hook,
    tokens_to_grid,
)
from toys import image

transformers = pytest.importorskip("transformers")

import mmcam  # noqa: E402
from mmcam.caption import CaptionExplainer  # noqa: E402
from mmcam.errors import MMCamError  # noqa: E402
from mmcam.layers import resolve_layer  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "picture", "of", "red",
         "blue", "circle", "square", "big", "small", "left", "the", "##s", "and", "."]
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def bert_tokenizer():
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)},
                                     do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def save_blip(path, cls_name="BlipForConditionalGeneration", seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BlipConfig(vision_config=VISION, text_config=dict(
        TEXT, vocab_size=len(WORDS), bos_token_id=5, pad_token_id=0, sep_token_id=3,
        eos_token_id=3))
    model = getattr(transformers, cls_name)(cfg)
    proc = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=bert_tokenizer())
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def save_git(path):
    torch.manual_seed(1)
    cfg = transformers.GitConfig(vision_config=VISION, vocab_size=len(WORDS), bos_token_id=2,
                                 eos_token_id=3, pad_token_id=0, **TEXT)
    model = transformers.GitForCausalLM(cfg)
    proc = transformers.GitProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=bert_tokenizer())
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def save_vit_gpt2(path):
    torch.manual_seed(2)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["a red circle left of the big blue square", "the small squares and circles",
              "a picture of red and blue"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=80, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                               bos_token="<|endoftext|>",
                                               pad_token="<|endoftext|>")
    end = tok.eos_token_id
    vc = transformers.ViTConfig(**VISION)
    gc = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2,
                                 add_cross_attention=True, bos_token_id=end, eos_token_id=end)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vc, gc)
    cfg.decoder_start_token_id = cfg.pad_token_id = end
    model = transformers.VisionEncoderDecoderModel(cfg)
    model.generation_config.decoder_start_token_id = end
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = end
    proc = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(path)
    proc.save_pretrained(path)
    tok.save_pretrained(path)
    return path


FAMILIES = {"blip": save_blip, "git": save_git, "vit-gpt2": save_vit_gpt2}


@pytest.fixture(scope="module", params=list(FAMILIES))
def saved(request, tmp_path_factory):
    return request.param, FAMILIES[request.param](tmp_path_factory.mktemp(request.param))


def loop_grads(model, layer, pixel_values, full_ids, kwarg, positions, targets):
    """Per target token: forward the HF class with a hook, one backward -> (A, G) raw."""
    out = []
    for pos, tgt in zip(positions, targets):
        held = {}
        h = layer.register_forward_hook(leaf_hook(held), prepend=True)
        try:
            logits = model(pixel_values=pixel_values, use_cache=False,
                           **{kwarg: full_ids}).logits
        finally:
            h.remove()
        shift = logits.shape[1] - full_ids.shape[1]
        y = logits[0, shift + pos].float().log_softmax(-1)[tgt]
        (g,) = torch.autograd.grad(y, held["A"])
        out.append((held["A"].detach(), g))
    return out


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_maps_equal_a_per_token_loop_against_the_hf_class(saved, strategy):
    name, path = saved
    ad = mmcam.load_model(path)
    model = ad.model
    caption = "A red circles left of the big square."
    ex = CaptionExplainer(ad, strategy=strategy, chunk_size=3)
    r1 = ex.explain(image(3, (50, 40)), caption)
    r2 = ex.explain(image(3, (50, 40)), caption)  # transformers adds hooks lazily: same maps
    torch.testing.assert_close(r1.layer_maps, r2.layer_maps)
    assert r1.words == caption.split()
    pv = ad.prepare(image(3, (50, 40)))[0]["pixel_values"]
    ids = ad.tokenize(caption)
    prefix = ad._prefix()
    full = torch.cat([torch.tensor(prefix), ids])[None]
    k = len(prefix)
    pairs = loop_grads(model, resolve_layer(model, ad.layer), pv, full, ad.family.text_kwarg,
                       [k - 1 + j for j in range(len(ids))], ids.tolist())
    _, index = ad.word_groups(ids, caption)
    want = []
    for w in range(len(r1.words)):  # a word's score is the sum of its tokens' log-probs
        toks = [t for t, x in enumerate(index) if x == w]
        A = pairs[toks[0]][0]
        G = sum(pairs[t][1] for t in toks)
        p = ad.layout.prefix
        want.append(cam_by_hand(tokens_to_grid(A, p), tokens_to_grid(G, p)))
    want = torch.stack(want)
    assert (want.amax(dim=(1, 2)) > 0).sum() >= 3
    assert_maps_close(r1.layer_maps, want)
    with torch.no_grad():
        logits = model(pixel_values=pv, use_cache=False, **{ad.family.text_kwarg: full}).logits
    tok_lp = [float(logits[0, -len(ids) - 1 + t].float().log_softmax(-1)[ids[t]])
              for t in range(len(ids))]
    lp = [sum(x for x, i in zip(tok_lp, index) if i == w) for w in range(len(r1.words))]
    torch.testing.assert_close(torch.tensor(r1.logprobs), torch.tensor(lp), rtol=1e-5, atol=1e-5)
    assert hooks_left(model) == 0


def test_generated_caption_and_word_grouping(saved):
    name, path = saved
    ad = mmcam.load_model(path)
    res = CaptionExplainer(ad).explain(image(5, (40, 40)), max_len=6)
    ids = ad.generate(ad.prepare(image(5, (40, 40)))[0], max_len=6)[0]
    assert len(res.words) == len(ad.word_groups(ids)[0]) and res.maps.shape[1:] == (40, 40)


def test_word_grouping_on_known_strings():
    from mmcam.adapters.hf import HFCaptioner

    wp = HFCaptioner.__new__(HFCaptioner)
    wp.tokenizer, wp._wordpiece = bert_tokenizer(), True
    ids = wp.tokenize("The red circles.")
    assert wp.word_groups(ids, "The red circles.") == (["The", "red", "circles."], [0, 1, 2, 2, 2])
    assert wp.word_groups(ids)[1] == [0, 1, 2, 2, 3]  # without text "." is its own word
    unk = wp.tokenize("a green circle")  # "green" is not in the vocabulary: [UNK]
    assert wp.word_groups(unk, "a green circle")[0] == ["a", "green", "circle"]
    # a WordPiece vocabulary of whole words only (no "##" entries), as shapes-blip has
    whole = HFCaptioner.__new__(HFCaptioner)
    whole.tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(
        [w for w in WORDS if not w.startswith("##")])})
    from mmcam.adapters.hf import is_wordpiece

    whole._wordpiece = is_wordpiece(whole.tokenizer)
    assert whole.word_groups(whole.tokenize("a red circle")) == (["a", "red", "circle"],
                                                                 [0, 1, 2])


def test_hub_id_not_cached_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(MMCamError, match="not in the local cache: run once online or pass a"):
        mmcam.load_model("hf:someone/no-such-captioner")


def _no_proxy(monkeypatch):
    from mmcam.adapters.hf import PROXY_VARS

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for v in PROXY_VARS:
        monkeypatch.delenv(v, raising=False)


def test_unreachable_hub_fails_at_once_with_one_line(monkeypatch, tmp_path):
    import time

    from huggingface_hub import constants

    _no_proxy(monkeypatch)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(MMCamError, match=r"^someone/no-such-captioner is not in the local cache"
                       r" and 127\.0\.0\.1 cannot be reached \(.+\): run once online or pass"):
        mmcam.load_model("hf:someone/no-such-captioner")
    assert time.perf_counter() - t0 < 10  # huggingface_hub's retries take about 25 s


def test_hub_probe_reads_the_endpoint_and_skips_proxies(monkeypatch):
    import socket

    from huggingface_hub import constants

    from mmcam.adapters.hf import _hub_unreachable

    _no_proxy(monkeypatch)
    calls = []

    def connect(address, timeout=None):
        calls.append((address, timeout))
        raise TimeoutError("timed out")
    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.org")
    assert _hub_unreachable() == "hub.example.org cannot be reached (timed out)"
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example.org:8080/")
    assert "mirror.example.org" in _hub_unreachable(timeout=0.5)
    assert calls == [(("hub.example.org", 443), 3.0), (("mirror.example.org", 8080), 0.5)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    assert _hub_unreachable() is None and len(calls) == 2  # behind a proxy: not probed


def test_cli_explains_a_saved_hf_folder(tmp_path):
    import subprocess
    import sys

    folder = save_blip(tmp_path / "blip")
    img = tmp_path / "img.png"
    image(6, (48, 40)).save(img)
    r = subprocess.run([sys.executable, "-m", "mmcam", "caption", str(img), "--model",
                        str(folder), "--caption", "a big red circle", "--strategy", "vjp",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[1:5]] == ["a", "big", "red",
                                                                       "circle"]
    assert (tmp_path / "out" / "index.html").is_file()
    lib = CaptionExplainer(mmcam.load_model(folder)).explain(img, "a big red circle")
    shown = [float(line.split("log p =")[1].split()[0]) for line in r.stdout.splitlines()[1:5]]
    assert shown == pytest.approx(lib.logprobs, abs=1e-4)


def test_app_lists_hf_folders_under_mmcam_models(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from mmcam.app import Models

    save_blip(tmp_path / "tiny-blip")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"architectures": ["NoSuchModel"]}')
    (tmp_path / "not-a-model").mkdir()
    monkeypatch.setenv("MMCAM_MODELS", str(tmp_path))
    models = Models()
    problems = models.add_hf_folders()
    name = "tiny-blip"
    assert models.names("captioner")[0] == name  # first: $MMCAM_MODELS comes before models/
    assert len(problems) == 1 and "broken" in problems[0]
    assert "not a transformers checkpoint" in problems[0]
    r = CaptionExplainer(models.get(name, "captioner")).explain(image(1), "a red circle")
    assert r.words == ["a", "red", "circle"]


def save_blip_vqa(path):
    return save_blip(path, "BlipForQuestionAnswering", seed=3)


def blip_vqa_answer_grads(model, pv, question, answer_ids, layer):
    """log p(answer ids | question, image) by running BLIP VQA's parts, and dy/dA at layer."""
    held = {}
    h = layer.register_forward_hook(leaf_hook(held), prepend=True)
    try:
        img = model.vision_model(pixel_values=pv)[0]
        q = model.text_encoder(input_ids=question, encoder_hidden_states=img)[0]
        dec_in = torch.tensor([[5] + answer_ids[:-1]])
        logits = model.text_decoder(input_ids=dec_in, encoder_hidden_states=q,
                                    use_cache=False).logits[0]
    finally:
        h.remove()
    y = sum(logits[j].float().log_softmax(-1)[t] for j, t in enumerate(answer_ids))
    (g,) = torch.autograd.grad(y, held["A"])
    return y.item(), held["A"].detach(), g


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_blip_vqa_answers_as_text_equal_a_loop(tmp_path, strategy):
    from mmcam.vqa import VQAExplainer

    ad = mmcam.load_model(save_blip_vqa(tmp_path / "vqa"))
    model = ad.model
    pil = image(8, (44, 36))
    r = VQAExplainer(ad, strategy=strategy).explain(pil, "what color is the circle?",
                                                    answer="red", contrast="blue", top_k=3)
    pv = ad.prepare(pil)[0]["pixel_values"]
    q = torch.tensor([bert_tokenizer()("what color is the circle?")["input_ids"]])
    layer = resolve_layer(model, "vision_model.encoder.layers[-1]")
    y_red, A, g_red = blip_vqa_answer_grads(model, pv, q, [9, 3], layer)
    _, _, g_blue = blip_vqa_answer_grads(model, pv, q, [10, 3], layer)
    grid = [tokens_to_grid(t, 1) for t in (A, g_red, g_blue)]
    assert r.answer == "red" and r.probability == pytest.approx(float(torch.tensor(y_red).exp()),
                                                                rel=1e-5)
    want = torch.stack([cam_by_hand(grid[0], grid[1]), cam_by_hand(grid[0], grid[1] - grid[2])])
    # maps are drawn on the image: compare through the same geometry
    geom = ad.prepare(pil)[1]
    assert_maps_close(torch.stack([r.map, r.contrast_map]), geom.to_image(want))
    # the top answers are the model's own beam-search answers, each explained as text
    assert 1 <= len(r.top_answers) <= 3 and r.model_answer == r.top_answers[0][0]
    for text, p, m in r.top_answers:
        ids = bert_tokenizer()(text, add_special_tokens=False)["input_ids"] + [3]
        y, A, g = blip_vqa_answer_grads(model, pv, q, ids, layer)
        assert p == pytest.approx(float(torch.tensor(y).exp()), rel=1e-5)
        want = geom.to_image(cam_by_hand(tokens_to_grid(A, 1), tokens_to_grid(g, 1))[None])[0]
        if want.abs().max() > 0:
            assert_maps_close(m, want)
    assert hooks_left(model) == 0


def test_blip_trainer_is_deterministic_and_saves_a_loadable_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from mmcam.models.train_blip import train_blip_captioner

    hp = {"vision_steps": 2, "vision_batch": 2}  # the vision-only phase, kept tiny here
    runs = [train_blip_captioner(tmp_path / f"run{k}", seed=3, steps=3, n_train=12,
                                 progress=False, n_eval=3, hp=hp) for k in range(2)]
    a, b = (load_file(str(tmp_path / f"run{k}" / "model.safetensors")) for k in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0]["loss_history"] == runs[1]["loss_history"] and len(runs[0]["loss_history"]) == 3
    assert 0.0 <= runs[0]["bleu4"] <= 1.0 and runs[0]["n_scenes"] == 3
    ad = mmcam.load_model(tmp_path / "run0")
    assert type(ad.model).__name__ == "BlipForConditionalGeneration"
    assert ad.layer == "vision_model"  # the tower's output: the post-LayerNorm tokens
    assert "BLEU-4" in (tmp_path / "run0" / "README.md").read_text()
    r = CaptionExplainer(ad).explain(image(2, (128, 128)), "a large red circle")
    assert r.layer_maps.shape == (4, 8, 8)  # the explained grid is 8x8
    with pytest.raises(MMCamError, match="reserved"):
        train_blip_captioner(tmp_path / "x", seed=1_000_000, steps=1)


def test_cli_vqa_loads_a_git_folder_as_vqa_and_refuses_a_captioner(tmp_path, capsys):
    from mmcam.cli import main
    from mmcam.models.hub import is_hf_model
    from mmcam.vqa import VQAExplainer

    git, blip = save_git(tmp_path / "git"), save_blip(tmp_path / "blip")
    img = tmp_path / "img.png"
    image(4, (40, 40)).save(img)
    assert is_hf_model(git) and is_hf_model("hf:org/name") and not is_hf_model("shapes-vqa")
    assert not is_hf_model(tmp_path / "no-such-folder")
    q = "what color is the circle?"
    assert main(["vqa", str(img), q, "--model", str(git), "--out", str(tmp_path / "o")]) == 0
    lib = VQAExplainer(mmcam.load_model(git, task="vqa")).explain(img, q)
    assert f"answer: {lib.answer}  box = {lib.box}" in capsys.readouterr().out
    assert main(["vqa", str(img), q, "--model", str(blip), "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.strip() == (
        "mmcam vqa: error: BlipForConditionalGeneration does not answer questions: mmcam's VQA "
        "families are BlipForQuestionAnswering, GIT VQA checkpoints (GitForCausalLM), ViLT, "
        "LLaVA, PaliGemma and Florence-2")


def test_app_sorts_blip_vqa_as_a_vqa_model(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from mmcam.app import Models

    save_blip_vqa(tmp_path / "tiny-blip-vqa")
    monkeypatch.setenv("MMCAM_MODELS", str(tmp_path))
    models = Models()
    assert models.add_hf_folders() == []
    assert models.names("vqa")[0] == "tiny-blip-vqa"


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_git_vqa_answers_as_text_equal_a_loop(tmp_path, strategy):
    from mmcam.vqa import VQAExplainer

    folder = save_git(tmp_path / "git")
    ad = mmcam.load_model(folder, task="vqa")
    model = ad.model
    pil = image(9, (40, 48))
    r = VQAExplainer(ad, strategy=strategy).explain(pil, "the big circle?", answer="red",
                                                    contrast="blue", top_k=2)
    pv = ad.prepare(pil)[0]["pixel_values"]
    q = bert_tokenizer()("the big circle?")["input_ids"][:-1]  # [CLS] question, no [SEP]
    layer = resolve_layer(model, ad.layer)
    assert ad.layer == "git.image_encoder"  # its output: the post_layernorm tokens

    def grads(answer):  # log p(answer + [SEP] | [CLS] question, image) on the HF class
        full = torch.tensor([q + answer])
        pairs = loop_grads(model, layer, pv, full, "input_ids",
                           [len(q) - 1 + j for j in range(len(answer))], answer)
        A = pairs[0][0]
        return A, sum(g for _, g in pairs)

    A, g_red = grads([9, 3])
    _, g_blue = grads([10, 3])
    grid = [tokens_to_grid(t, 1) for t in (A, g_red, g_blue)]
    geom = ad.prepare(pil)[1]
    want = geom.to_image(torch.stack([cam_by_hand(grid[0], grid[1]),
                                      cam_by_hand(grid[0], grid[1] - grid[2])]))
    assert r.answer == "red"
    assert_maps_close(torch.stack([r.map, r.contrast_map]), want)
    assert hooks_left(model) == 0


def save_vilt(path):
    torch.manual_seed(4)
    answers = ["red", "blue", "green", "yes", "no", "2"]
    cfg = transformers.ViltConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        image_size=64, patch_size=16, max_image_length=-1, vocab_size=len(WORDS),
        max_position_embeddings=40, num_labels=len(answers),
        id2label=dict(enumerate(answers)), label2id={a: i for i, a in enumerate(answers)})
    model = transformers.ViltForQuestionAnswering(cfg)
    proc = transformers.ViltProcessor(
        image_processor=transformers.ViltImageProcessor(size={"shortest_edge": 64},
                                                        size_divisor=16),
        tokenizer=bert_tokenizer())
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


@pytest.mark.parametrize("strategy", ["copies", "vjp"])
def test_vilt_shuffled_patches_equal_a_loop(tmp_path, strategy):
    from mmcam.adapters.hf import VILT_SEED
    from mmcam.vqa import VQAExplainer

    ad = mmcam.load_model(save_vilt(tmp_path / "vilt"))
    model = ad.model
    assert ad.layer == "vilt.encoder.layer[1]" and ad.answers[0] == "red"
    pil = image(10, (70, 50))
    r = VQAExplainer(ad, strategy=strategy).explain(pil, "the big circle?", contrast="blue")
    enc = transformers.ViltProcessor.from_pretrained(tmp_path / "vilt")(
        images=pil, text="the big circle?", return_tensors="pt")
    layer = model.vilt.encoder.layer[1]

    def forward(rows):  # one forward with the RNG seeded as mmcam seeds it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(VILT_SEED)
            return rows()

    with torch.no_grad():
        _, _, (index, (h, w)) = forward(lambda: model.vilt.embeddings.visual_embed(
            enc["pixel_values"], enc["pixel_mask"], max_image_length=-1))
    assert torch.equal(ad.prepare(pil)[0]["patches"], index[0])  # the order mmcam scatters by

    def by_hand(t):  # text, image CLS, then patch k at cell index[k]
        grid = torch.zeros(t.shape[2], h, w)
        n = index.shape[1]
        for k in range(n):
            grid[:, index[0, k, 0], index[0, k, 1]] = t[0, t.shape[1] - n + k]
        return grid

    def grads(answer):
        held = {}
        hd = layer.register_forward_hook(leaf_hook(held), prepend=True)
        try:
            logits = forward(lambda: model(**enc).logits)
        finally:
            hd.remove()
        y = logits[0].log_softmax(-1)[answer]
        (g,) = torch.autograd.grad(y, held["A"])
        return by_hand(held["A"]), by_hand(g)

    A, g_top = grads(ad.answers.index(r.answer))
    _, g_blue = grads(1)
    geom = ad.prepare(pil)[1]
    want = geom.to_image(torch.stack([cam_by_hand(A, g_top), cam_by_hand(A, g_top - g_blue)]))
    assert_maps_close(torch.stack([r.map, r.contrast_map]), want)
    assert r.unknown_words == ["circle?"]  # "?" is not in the tiny vocabulary
    assert hooks_left(model) == 0


def test_swin_encoder_decoder_equals_a_loop(tmp_path):
    """VisionEncoderDecoder with a Swin encoder: the last stage's tuple output, element 0
    read as (B, h*w, C) tokens with no CLS."""
    torch.manual_seed(5)
    sc = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                 num_heads=[2, 2], window_size=4)
    gc = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, is_decoder=True,
                                 add_cross_attention=True)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(sc, gc)
    cfg.decoder_start_token_id, cfg.pad_token_id = 5, 0
    model = transformers.VisionEncoderDecoderModel(cfg)
    model.save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    bert_tokenizer().save_pretrained(tmp_path)
    ad = mmcam.load_model(tmp_path)
    assert ad.layer == "encoder.encoder.layers[-1]" and ad.layout.prefix == 0
    caption = "a red circle"
    r = CaptionExplainer(ad).explain(image(2, (40, 40)), caption)
    pv = ad.prepare(image(2, (40, 40)))[0]["pixel_values"]
    ids = ad.tokenize(caption)
    full = torch.cat([torch.tensor([5]), ids])[None]
    pairs = loop_grads(ad.model, resolve_layer(ad.model, ad.layer), pv, full,
                       "decoder_input_ids", list(range(len(ids))), ids.tolist())
    want = torch.stack([cam_by_hand(tokens_to_grid(A, 0), tokens_to_grid(g, 0))
                        for A, g in pairs])
    assert r.layer_maps.shape == (3, 4, 4)
    assert_maps_close(r.layer_maps, want)


def shipped(name):
    from mmcam.models.hub import REPO_MODELS

    if not (REPO_MODELS / name / "model.safetensors").is_file():
        pytest.fail(f"models/{name} is missing: train it with `mmcam train` (see its card)")
    return mmcam.load_model(name)


def test_shipped_shapes_blip_meets_its_floor_and_points_at_objects():
    from mmcam.grounding import pointing_game
    from mmcam.models.train_blip import evaluate_blip_captioner
    from mmcam.scenes import generate

    ad = shipped("shapes-blip")
    assert type(ad.model).__name__ == "BlipForConditionalGeneration"
    assert evaluate_blip_captioner(ad, n=40, seed=2_000_000)["bleu4"] >= 0.5
    r = pointing_game(CaptionExplainer(ad, method="hirescam"), generate(20, seed=2_000_001),
                      progress=False)
    assert r["all"]["words"] >= 40
    assert r["all"]["hit_rate"] > 3 * r["all"]["chance"]  # chance: box area / image area


def test_vilt_patch_order_is_the_same_from_many_threads(tmp_path):
    """ViLT draws its patch order from the global RNG: concurrent forwards (app users) must
    each see the seeded order, not a state another thread re-seeded or restored."""
    import threading

    ad = mmcam.load_model(save_vilt(tmp_path / "vilt"))
    pil = image(10, (70, 50))
    want = ad.prepare(pil)[0]["patches"]
    bad: list[int] = []

    def work() -> None:
        for _ in range(15):
            if not torch.equal(ad.prepare(pil)[0]["patches"], want):
                bad.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
