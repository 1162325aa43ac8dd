"""Hostile and odd inputs end in one clear line: the CLI exits 2 with ``mmcam <cmd>: error: ...``
and no traceback, the library raises :class:`MMCamError`; huge images are downscaled with a
notice, 16-bit and float images are scaled to 8 bits (issue 11, first part)."""

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcam
from mmcam import limits
from mmcam.caption import CaptionExplainer
from mmcam.cli import main
from mmcam.errors import MMCamError
from mmcam.images import MAX_PIXELS, ImageDownscaled, load_image
from mmcam.models.hub import REPO_MODELS, load_model
from mmcam.scenes import generate
from mmcam.vqa import VQAExplainer


def grey_png(path: Path, width: int, height: int, value: int = 128) -> Path:
    """A valid 8-bit grey PNG of one value, written row by row (a few MB of memory at most)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    z = zlib.compressobj(9)
    row = b"\x00" + bytes([value]) * width
    data = b"".join([z.compress(row) for _ in range(height)] + [z.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    generate(1, seed=4242)[0].image.save(path)
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """11000x11000: under Pillow's decompression-bomb limit, 121 M pixels."""
    return grey_png(tmp_path_factory.mktemp("huge") / "huge.png", 11000, 11000)


@pytest.fixture(scope="module")
def explainers():
    from mmcam.classify import ClassExplainer

    return {"cap": CaptionExplainer(mmcam.load_model("shapes-captioner")),
            "vqa": VQAExplainer(mmcam.load_model("shapes-vqa")),
            "cls": ClassExplainer(mmcam.load_model("shapes-classifier"))}


def one_error_line(capsys, argv, message):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mmcam {argv[0]}: error: ") and message in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------- images

def bomb(d):
    return grey_png(d / "bomb.png", 20000, 20000)


def nan_tiff(d):
    a = np.full((8, 8), 0.5, dtype=np.float32)
    a[3, 4] = np.nan
    Image.fromarray(a).save(d / "nan.tif")
    return d / "nan.tif"


IMAGE_FILES = [(bomb, "too large to decode safely"), (nan_tiff, "NaN or infinite pixels")]


@pytest.mark.parametrize("make,message", IMAGE_FILES)
def test_bad_image_file_cli(tmp_path, capsys, make, message):
    one_error_line(capsys, ["caption", str(make(tmp_path)), "--out", str(tmp_path / "o")],
                   message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "image,message",
    [(lambda d: bomb(d), "too large to decode safely"),
     (lambda d: nan_tiff(d), "NaN or infinite pixels"),
     (lambda d: np.zeros((0, 0, 3), dtype=np.uint8), "empty (0x0 pixels)"),
     (lambda d: np.zeros((0, 0, 3), dtype=np.float32), "empty (0x0 pixels)"),
     (lambda d: np.array([[[0.1, np.nan, 0.2]]]), "NaN or infinite pixels"),
     (lambda d: np.full((3, 4, 4), np.inf, dtype=np.float32), "NaN or infinite pixels")],
)
def test_bad_image_library(tmp_path, image, message):
    with pytest.raises(MMCamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_image(image(tmp_path))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = (np.arange(6 * 7, dtype=np.int64).reshape(6, 7) * 1597) % 65536
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really 16 bits on disk
    expected = (values.astype(np.int64) >> 8).astype(np.uint8)
    for src in (tmp_path / "g16.png", Image.open(tmp_path / "g16.png")):
        got = np.asarray(load_image(src))
        assert got.shape == (6, 7, 3)
        for c in range(3):
            assert np.array_equal(got[..., c], expected)


def test_float_tiff_is_scaled(tmp_path):
    unit = np.linspace(0.0, 1.0, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    got = np.asarray(load_image(tmp_path / "unit.tif"))[..., 0]
    assert np.array_equal(got, np.round(unit.astype(np.float64) * 255).astype(np.uint8))
    wide = (unit * 1000 - 200).astype(np.float32)  # outside 0..255: stretched min..max
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    got = np.asarray(load_image(tmp_path / "wide.tif"))[..., 0]
    w = wide.astype(np.float64)
    assert np.array_equal(got, np.round((w - w.min()) * 255 / (w.max() - w.min())).astype(np.uint8))


def test_arrays_of_every_number_type_follow_the_documented_scaling():
    """Float and integer arrays in 0..255 were clipped to [0, 1] and became all white. Each
    case's expected pixels are computed here from the documented rule."""
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    want = u8.copy()
    for arr in (u8.astype(np.float32), u8.astype(np.float64), u8.astype(np.int32),
                u8.astype(np.int64), u8.astype(np.uint16),
                torch.from_numpy(u8.astype(np.float32)).permute(2, 0, 1)):
        assert np.array_equal(np.asarray(load_image(arr)), want), getattr(arr, "dtype", arr)
    unit = rng.random((5, 6, 3))  # floats in [0, 1]: round(255 x)
    assert np.array_equal(np.asarray(load_image(unit)), np.round(unit * 255).astype(np.uint8))
    sixteen = rng.integers(0, 65536, (5, 6, 3)).astype(np.uint16)  # as a 16-bit PNG: >> 8
    sixteen[0, 0, 0] = 65535
    assert np.array_equal(np.asarray(load_image(sixteen)),
                          (sixteen.astype(np.int64) >> 8).astype(np.uint8))
    wide = rng.integers(-1000, 1000, (5, 6, 3))  # any other range: stretched min..max
    w = wide.astype(np.float64)
    assert np.array_equal(np.asarray(load_image(wide)),
                          np.round((w - w.min()) * 255 / (w.max() - w.min())).astype(np.uint8))
    with pytest.raises(MMCamError, match="dtype complex128"):
        load_image(np.zeros((4, 4, 3), complex))


def test_huge_image_is_downscaled_with_a_notice(huge_png, monkeypatch):
    assert huge_png.stat().st_size < 500_000
    monkeypatch.delenv("MMCAM_MAX_PIXELS", raising=False)
    with pytest.warns(ImageDownscaled, match="11000x11000"):
        im = load_image(huge_png)
    assert im.size[0] * im.size[1] <= MAX_PIXELS and im.size[0] == im.size[1] > 1000
    assert np.asarray(im).min() == np.asarray(im).max() == 128  # the content, not a blank
    monkeypatch.setenv("MMCAM_MAX_PIXELS", "10000")
    with pytest.warns(ImageDownscaled):
        assert load_image(huge_png).size == (100, 100)
    with pytest.warns(ImageDownscaled):  # arrays too
        assert load_image(np.zeros((300, 200, 3), np.uint8)).size[0] * 300 // 200 <= 123
    monkeypatch.setenv("MMCAM_MAX_PIXELS", "-3")
    with pytest.raises(MMCamError, match="MMCAM_MAX_PIXELS"):
        load_image(huge_png)


def test_huge_image_peak_memory_is_bounded(huge_png):
    """In a fresh process: loading the 121 M pixel file adds < 400 MB to the peak (one grey
    decode, 121 MB; no full-size RGB copy) and returns at most MAX_PIXELS pixels."""
    code = (
        "import resource, sys, warnings\n"
        "from mmcam.images import load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "warnings.simplefilter('ignore')\n"
        f"im = load_image({str(huge_png)!r})\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(im.size[0] * im.size[1], (after - before) // 1024)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    pixels, added_mb = map(int, r.stdout.split())
    assert pixels <= MAX_PIXELS
    assert added_mb < 400, added_mb


def test_huge_image_cli_runs_with_one_notice(huge_png, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMCAM_MAX_PIXELS", str(128 * 128))
    out = tmp_path / "o"
    assert main(["caption", str(huge_png), "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmcam caption: note: " + str(huge_png) + " is 11000x11000 (121,000,000 "
                   "pixels), over the limit of 16,384 pixels (MMCAM_MAX_PIXELS): explained at "
                   "128x128"]
    assert Image.open(out / "sentence.png").size == (128, 128)


# ---------------------------------------------------------------- long text

LONG = " ".join(["a"] * (limits.MAX_WORDS + 1))
MANY_TOKENS = "a," * limits.MAX_TOKENS  # one word, 2 x MAX_TOKENS tokens


@pytest.mark.parametrize(
    "argv,message",
    [(["caption", "{img}", "--caption", LONG], f"over the limit of {limits.MAX_WORDS}"),
     (["caption", "{img}", "--caption", MANY_TOKENS], f"over the limit of {limits.MAX_TOKENS}"),
     (["vqa", "{img}", LONG], f"over the limit of {limits.MAX_WORDS}"),
     (["vqa", "{img}", MANY_TOKENS + "?"], f"over the limit of {limits.MAX_TOKENS}")],
)
def test_long_text_cli(scene_png, tmp_path, capsys, argv, message):
    argv = [a.format(img=scene_png) for a in argv] + ["--out", str(tmp_path / "o")]
    one_error_line(capsys, argv, message)
    assert not (tmp_path / "o").exists()


def test_long_text_library(scene_png):
    cap = CaptionExplainer(mmcam.load_model("shapes-captioner"))
    vqa = VQAExplainer(mmcam.load_model("shapes-vqa"))
    n_words = f"has {limits.MAX_WORDS + 1} words, over the limit of {limits.MAX_WORDS}"
    n_tokens = f"is {2 * limits.MAX_TOKENS} tokens long, over the limit of {limits.MAX_TOKENS}"
    with pytest.raises(MMCamError, match=n_words):
        cap.explain(scene_png, LONG)
    with pytest.raises(MMCamError, match=n_tokens):
        cap.explain(scene_png, MANY_TOKENS)
    with pytest.raises(MMCamError, match=n_words):
        vqa.explain(scene_png, LONG)
    with pytest.raises(MMCamError, match=n_words):
        vqa.explained(scene_png, LONG)
    with pytest.raises(MMCamError, match=f"is {2 * limits.MAX_TOKENS + 1} tokens long"):
        vqa.explain(scene_png, MANY_TOKENS + "?")
    # at the limit it still works
    words = cap.explain(scene_png, " ".join(["a"] * limits.MAX_WORDS)).words
    assert len(words) == limits.MAX_WORDS


# ---------------------------------------------------------------- model folders

def _copy(d):
    return Path(shutil.copytree(REPO_MODELS / "shapes-captioner", d / "m"))


def missing_folder(d):
    return d / "no" / "such-model"


def truncated(d):
    m = _copy(d)
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    return m


def corrupted_header(d):
    m = _copy(d)
    data = bytearray((m / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header
    (m / "model.safetensors").write_bytes(bytes(data))
    return m


def pickled(d):
    import torch

    m = _copy(d)
    torch.save({"w": torch.zeros(3)}, m / "model.safetensors")
    return m


def edit_config(change):
    def make(d):
        m = _copy(d)
        cfg = json.loads((m / "config.json").read_text())
        cfg = change(cfg)
        (m / "config.json").write_text(json.dumps(cfg))
        return m
    return make


def _drop(key):
    return lambda c: {k: v for k, v in c.items() if k != key}


def _arch_drop(key):
    return lambda c: {**c, "arch": {k: v for k, v in c["arch"].items() if k != key}}


MODEL_CASES = [
    (missing_folder, "model folder not found"),
    (truncated, "not a valid safetensors file"),
    (corrupted_header, "not a valid safetensors file"),
    (pickled, "not a valid safetensors file"),
    (edit_config(_drop("vocab")), "lacks the key 'vocab'"),
    (edit_config(_drop("image_size")), "lacks the key 'image_size'"),
    (edit_config(lambda c: {**c, "image_size": "big"}), "'image_size' must be a JSON integer"),
    (edit_config(lambda c: {**c, "std": [0.25, 0, 0.25]}), "'std' must be 3 numbers above 0"),
    (edit_config(lambda c: {**c, "kind": "detector"}), "'kind' must be one of"),
    (edit_config(_arch_drop("hidden")), "'arch' lacks the key 'hidden'"),
    (edit_config(lambda c: {**c, "arch": {**c["arch"], "hidden": 7}}), "do not fit config.json"),
    (edit_config(lambda c: {**c, "vocab": c["vocab"][:-1]}), "do not fit config.json"),
    (edit_config(lambda c: [c]), "must hold a JSON object"),
]


@pytest.mark.parametrize("make,message", MODEL_CASES)
def test_bad_model_folder_cli(scene_png, tmp_path, capsys, make, message):
    folder = make(tmp_path)
    one_error_line(capsys, ["caption", str(scene_png), "--model", str(folder),
                            "--out", str(tmp_path / "o")], message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("make,message", MODEL_CASES)
def test_bad_model_folder_library(tmp_path, make, message):
    folder = make(tmp_path)
    with pytest.raises(MMCamError) as e:
        load_model(folder)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_in_classify_is_not_a_torchvision_name(scene_png, tmp_path, capsys):
    one_error_line(capsys, ["classify", str(scene_png), "--model", str(tmp_path / "nope"),
                            "--out", str(tmp_path / "o")], "model folder not found")


def test_intact_copy_still_loads(tmp_path, scene_png):
    """The damage above is what fails: an undamaged copy gives the shipped model's caption."""
    ref = CaptionExplainer(mmcam.load_model("shapes-captioner")).explain(scene_png)
    got = CaptionExplainer(load_model(_copy(tmp_path))).explain(scene_png)
    assert got.words == ref.words


# ---------------------------------------------------------------- CLI arguments

@pytest.mark.parametrize(
    "argv,message",
    [(["vqa", "{img}", "what color is the shape?", "--top", "0"], "--top 0: must be at least 1"),
     (["vqa", "{img}", "what color is the shape?", "--top", "-2"],
      "--top -2: must be at least 1"),
     (["classify", "{img}", "--model", "shapes-classifier", "--top", "0"],
      "--top 0: must be at least 1"),
     (["caption", "{img}", "--beam", "0"], "--beam 0: must be at least 1"),
     (["caption", "{img}", "--method", "integrated", "--steps", "0"],
      "--steps 0: must be at least 1"),
     (["vqa", "{img}", "what?", "--steps", "-3"], "--steps -3: must be at least 1"),
     (["classify", "{img}", "--model", "shapes-classifier", "--steps", "0"],
      "--steps 0: must be at least 1"),
     (["caption", "{img}", "--out", "{file}"], "is an existing file"),
     (["vqa", "{img}", "what?", "--out", "{file}/sub"], "is a file, so no folder can be made"),
     (["caption", "{img}", "--out", "/proc/sys/mmcam-out"], "is not writable"),
     (["train", "captioner", "--out", "{file}"], "is an existing file"),
     (["train", "blip-vqa", "--out", "{file}/sub"], "is a file, so no folder can be made"),
     (["train", "classifier", "--out", "/proc/sys/mmcam-out"], "is not writable"),
     (["evaluate-explanations", "shapes-captioner", "--n", "2", "--out", "{file}"],
      "is an existing file"),
     (["evaluate-explanations", "shapes-vqa", "--out", "{file}/sub/deeper"],
      "is a file, so no folder can be made"),
     (["evaluate-explanations", "shapes-captioner", "--out", "/proc/sys/mmcam-out"],
      "is not writable"),
     (["bias-study", "--out", "{file}"], "is an existing file")],
)
def test_bad_arguments(scene_png, tmp_path, capsys, argv, message):
    import os

    if "/proc/sys" in " ".join(argv) and (not Path("/proc/sys").is_dir()
                                          or os.access("/proc/sys", os.W_OK)):
        pytest.skip("needs a read-only /proc/sys")
    f = tmp_path / "taken.txt"
    f.write_text("keep me")
    argv = [a.format(img=scene_png, file=f) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    one_error_line(capsys, argv, message)
    assert f.read_text() == "keep me" and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- library arguments

@pytest.mark.parametrize(
    "call,message",
    [(lambda e, im: e["vqa"].explain(im, "what color is the shape?", top_k=-1),
      "top_k=-1: must be an integer of at least 1"),
     (lambda e, im: e["vqa"].explain(im, "what color is the shape?", top_k=0),
      "top_k=0: must be an integer of at least 1"),
     (lambda e, im: e["vqa"].explain_batch([im], "what color is the shape?", top_k=-1),
      "top_k=-1: must be an integer of at least 1"),
     (lambda e, im: e["cls"].explain(im, classes=[]), "classes=[] names no class"),
     (lambda e, im: e["cls"].explain_batch([im, im], classes=[[0], []]),
      "classes=[] names no class"),
     (lambda e, im: e["cls"].explain(im, top=0), "top=0: must be an integer of at least 1"),
     (lambda e, im: e["cls"].explain(im, top=-3), "top=-3: must be an integer of at least 1"),
     (lambda e, im: e["cap"].explain(im, beam_size=0),
      "beam_size=0: must be an integer of at least 1"),
     (lambda e, im: e["cap"].explain(im, max_len=0),
      "max_len=0: must be an integer of at least 1"),
     (lambda e, im: e["cap"].explain_batch([im], max_len=-1),
      "max_len=-1: must be an integer of at least 1"),
     (lambda e, im: e["cap"].explain(im, caption=5), "a caption must be text, got int"),
     (lambda e, im: e["cap"].explain(im, caption=["a", "red"]),
      "a caption must be text, got list"),
     (lambda e, im: e["cap"].explain_batch([im], "a red star"), "captions must be a list"),
     (lambda e, im: e["vqa"].explain(im, "what color is the shape?", answer=3),
      "answer must be text, got int"),
     (lambda e, im: e["vqa"].explain(im, 5), "question must be text, got int"),
     (lambda e, im: e["vqa"].explained(im, ""), "question is empty"),
     (lambda e, im: e["cls"].explain(im, classes=3), "classes must be a list of class ids"),
     (lambda e, im: e["cls"].explain(im, classes=["circle"]), "class ids must be integers"),
     (lambda e, im: e["cls"].explain(im, classes=[1.7]), "class ids must be integers"),
     (lambda e, im: e["cls"].explain(im, classes=[True]), "class ids must be integers"),
     (lambda e, im: e["cls"].explain_batch([im], classes=3), "one list of class ids per"),
     (lambda e, im: e["cls"].explain_pixels(torch.zeros(2, 3, 64, 64), targets=[0, 1, 2]),
      "3 targets for 2 images"),
     (lambda e, im: e["cls"].explain_pixels(torch.zeros(0, 3, 64, 64)), "with B >= 1"),
     (lambda e, im: e["cls"].explain_pixels([[0.0]]), "got list"),
     (lambda e, im: type(e["cls"])(e["cls"].model, layer=e["cls"].layer,
                                   prepare=e["cls"].prepare, labels=["a"]).explain(im),
      "labels has 1 names but the model has"),
     (lambda e, im: type(e["cap"])(e["cap"].adapter, chunk_size=1.5),
      "chunk_size=1.5: must be an integer of at least 1"),
     (lambda e, im: type(e["cap"])(e["cap"].adapter, chunk_size=0),
      "chunk_size=0: must be an integer of at least 1"),
     (lambda e, im: e["cap"].explain(im).grid(ncols=0), "ncols=0: must be an integer"),
     (lambda e, im: e["vqa"].explain(im, "what color is the shape?").plot(ncols=-1),
      "ncols=-1: must be an integer")],
)
def test_bad_library_arguments(explainers, scene_png, call, message):
    with pytest.raises(MMCamError) as e:
        call(explainers, scene_png)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_explaining_works_inside_inference_mode(explainers, scene_png):
    """Under ``torch.inference_mode`` every explain call failed deep in autograd; it now runs
    outside it and gives the maps it gives elsewhere (bit-identical), pixel tensors made in
    inference mode included."""
    cap, vqa, cls = explainers["cap"], explainers["vqa"], explainers["cls"]
    want = (cap.explain(scene_png).maps, vqa.explain(scene_png, "what color is the shape?").map,
            cls.explain(scene_png).maps)
    pixels = cls.prepare(load_image(scene_png))
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels
    want_px = cls.explain_pixels(pixels, top=2)["maps"]
    with torch.inference_mode():
        got = (cap.explain(scene_png).maps, vqa.explain(scene_png, "what color is the shape?").map,
               cls.explain(scene_png).maps)
        got_px = cls.explain_pixels(pixels.clone(), top=2)["maps"]  # an inference tensor
        assert torch.is_inference_mode_enabled()  # the caller's mode is left as it was
    for a, b in zip(want + (want_px,), got + (got_px,)):
        assert torch.equal(a, b)


def test_smallest_library_arguments_still_work(explainers, scene_png):
    """The bound is 1, not more: one answer, one class, a greedy one-word-at-most caption."""
    assert len(explainers["vqa"].explain(scene_png, "what color is the shape?",
                                         top_k=1).top_answers) == 1
    assert len(explainers["cls"].explain(scene_png, top=1).classes) == 1
    assert len(explainers["cap"].explain(scene_png, max_len=1, beam_size=1).words) == 1


# ---------------------------------------------------------------- unknown caption words

def _vocab(name):
    return set(json.loads((REPO_MODELS / name / "config.json").read_text())["vocab"])


@pytest.mark.parametrize(
    "caption,unknown,all_unknown",
    [("xyzzy plugh", ["xyzzy", "plugh"], True),
     ("a 猫 🐱 circle", ["猫", "🐱"], False),
     ("a red circle", [], False)],
)
def test_unknown_caption_words(explainers, scene_png, tmp_path, capsys, caption, unknown,
                               all_unknown):
    vocab = _vocab("shapes-captioner")  # the oracle: the model's own vocabulary file
    assert [w for w in caption.split() if w not in vocab] == unknown
    r = explainers["cap"].explain(scene_png, caption)
    assert r.unknown_words == unknown
    assert r.to_dict()["unknown_words"] == unknown
    assert sum(w == "<unk>" for w in r.words) == len(unknown)
    # the CLI: one line, only when there are unknown words
    assert main(["caption", str(scene_png), "--caption", caption,
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr()
    notes = [ln for ln in out.out.splitlines() if "does not know" in ln]
    assert out.err == ""
    assert json.loads((tmp_path / "o" / "result.json").read_text())["unknown_words"] == unknown
    # the app's caption status text
    from mmcam.app import _caption_status, caption_view

    status = _caption_status(caption_view(r))
    if not unknown:
        assert notes == [] and "does not know" not in status
        return
    assert len(notes) == 1
    assert notes[0].strip() == ("words the model does not know (read as unknown): "
                                + ", ".join(unknown) + (
                                    " - all of the caption's words: its maps explain the "
                                    "unknown token" if all_unknown else ""))
    assert notes[0].strip() in status


def test_generated_caption_has_no_unknown_words(explainers, scene_png):
    r = explainers["cap"].explain(scene_png)
    assert r.generated and r.unknown_words == []
    assert set(r.words) <= _vocab("shapes-captioner") - {"<unk>"}


# ---------------------------------------------------------------- contrast equal to the answer

SAME = "the contrast {!r} is the answer itself: name another answer to contrast with"


@pytest.mark.parametrize("answer,contrast", [("red", "red"), ("red", " RED "),
                                             ("blue", "Blue")])
def test_contrast_equal_to_answer_cli(scene_png, tmp_path, capsys, answer, contrast):
    one_error_line(capsys, ["vqa", str(scene_png), "what color is the shape?", "--answer",
                            answer, "--contrast", contrast, "--out", str(tmp_path / "o")],
                   SAME.format(contrast.strip()))
    assert not (tmp_path / "o").exists()


def test_contrast_equal_to_answer_library(explainers, scene_png):
    vqa, q = explainers["vqa"], "what color is the shape?"
    with pytest.raises(MMCamError, match=SAME.format("red").replace("(", r"\(")):
        vqa.explain(scene_png, q, answer="Red", contrast="red")
    model_answer = vqa.explain(scene_png, q).answer  # no answer given: the model's is explained
    with pytest.raises(MMCamError) as e:
        vqa.explain(scene_png, q, contrast=model_answer.upper())
    assert str(e.value) == SAME.format(model_answer)
    other = next(a for a in vqa.adapter.answers if a != model_answer)
    assert vqa.explain(scene_png, q, contrast=other).contrast == other  # others still work


def test_contrast_equal_to_answer_app(scene_png):
    """The app's contrast handler shows the CLI's message and keeps running."""
    from mmcam.app import Session, build_app

    app = build_app()
    fns = {f.api_name: f for f in app.fns.values()}
    ask, contrast = fns["vqa"], fns["vqa_contrast"]
    model = ask.inputs[2].value
    session = Session()
    status = ask.fn(str(scene_png), "what color is the shape?", model, "gradcam", 0.5, False,
                    False, session)[0]
    assert status.startswith("**Answer: ")
    a = session.vqa.result.top_answers[session.vqa.selected][0]
    with pytest.warns(UserWarning, match="is the answer itself"):  # gradio's gr.Warning
        cmap, info, _ = contrast.fn(a.upper(), "gradcam", 0.5, False, model, session)
    assert info == f"**Error:** {SAME.format(a.upper())}"
    other = next(x for x in session.vqa.result.top_answers if x[0] != a)[0]
    cmap, info, _ = contrast.fn(other, "gradcam", 0.5, False, model, session)
    assert info.startswith(f"**Why {a} rather than {other}:**")


# ---------------------------------------------------------------- words of any script

WORLD = "a 猫 🐱 circle"


def test_non_latin_caption_is_saved_without_warnings(explainers, scene_png, tmp_path, capfd):
    """Saving (grid figures through matplotlib, overlays, HTML) and the app's PIL-drawn grid
    of a caption with CJK and emoji words: no warning, nothing on stderr."""
    import gc
    import logging
    import warnings

    import matplotlib.pyplot as plt

    from mmcam.app import caption_view, grid_image

    r = explainers["cap"].explain(scene_png, WORLD)
    gc.collect()  # what earlier tests left (gradio's event loops) is not collected in here
    capfd.readouterr()
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("matplotlib").addHandler(handler)  # findfont complaints would show
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r.save(tmp_path / "o")
            plt.close(r.plot(shared=False))
            grid_image(caption_view(r), 0.5, True, False)
    finally:
        logging.getLogger("matplotlib").removeHandler(handler)
    assert [str(w.message) for w in caught if w.category is not ResourceWarning] == []
    assert capfd.readouterr().err == ""
    assert (tmp_path / "o" / "grid.png").is_file()


def _has_glyph(ch):
    """The oracle: fontTools reads the installed fonts' own character maps."""
    from fontTools.ttLib import TTFont

    from mmcam import viz

    for _, path, _ in viz.fonts():
        font = TTFont(path, fontNumber=0, lazy=True)
        if ord(ch) in (font.getBestCmap() or {}):
            return True
    return False


@pytest.mark.parametrize("ch", list("a猫🐱жéא"))
def test_drawable_keeps_what_an_installed_font_has(ch):
    from mmcam import viz

    assert viz.fonts(), "no DejaVu/Noto font found at all"
    assert viz.drawable(ch) == (ch if _has_glyph(ch) else "?")


def test_fallback_when_no_font_has_the_glyph(monkeypatch):
    """With only ASCII glyphs available: other characters become '?', invisible marks go,
    and PIL draws the text exactly as it draws the '?' form (no tofu boxes)."""
    from PIL import ImageDraw

    from mmcam import viz

    family, path, _ = viz.fonts()[0]
    monkeypatch.setattr(viz, "fonts", lambda: ((family, path, frozenset(range(32, 127))),))
    viz._pil_font.cache_clear()
    try:
        assert viz.drawable("a 猫 🐱\ufe0f é circle") == "a ? ? ? circle"

        def drawn(text):
            im = Image.new("RGB", (240, 24), "white")
            viz.draw_text(ImageDraw.Draw(im), (2, 2), text)
            return np.asarray(im)

        assert np.array_equal(drawn("a 猫 circle"), drawn("a ? circle"))
        assert not np.array_equal(drawn("a b circle"), drawn("a ? circle"))
    finally:
        viz._pil_font.cache_clear()


def test_pil_text_uses_a_font_with_the_glyph():
    """A character the first font has is drawn as itself, not as the fallback '?'."""
    from PIL import ImageDraw

    from mmcam import viz

    def drawn(text):
        im = Image.new("RGB", (60, 24), "white")
        viz.draw_text(ImageDraw.Draw(im), (2, 2), text)
        return np.asarray(im)

    for ch in "жé":
        assert _has_glyph(ch)
        assert not np.array_equal(drawn(ch), drawn("?"))
        assert (drawn(ch) < 128).any()  # something dark was drawn


def test_unknown_caption_words_of_a_hugging_face_tokenizer():
    """Hugging Face captioners name the caption's whitespace words read as [UNK]."""
    transformers = pytest.importorskip("transformers")
    from mmcam.adapters.hf import HFCaptioner

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "circle"]
    ad = HFCaptioner.__new__(HFCaptioner)
    ad.tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    ad._wordpiece = True
    caption = "a green 猫 circle"
    assert ad.unknown_words(caption) == sorted(w for w in caption.split() if w not in vocab)
    assert ad.unknown_words("a red circle") == []
    cap = CaptionExplainer.__new__(CaptionExplainer)
    cap.adapter = ad
    assert cap.unknown_words(caption) == ["green", "猫"]


def test_a_layer_outside_the_image_encoder_is_refused():
    """On shapes-blip, ``layer="text_decoder"`` painted the caption's tokens on the image as a
    2x2 or 3x3 "grid" (its size followed the caption's length); layers of the text side are
    refused, layers of the vision tower still work, for captions and VQA."""
    cap, vqa = mmcam.load_model("shapes-blip"), mmcam.load_model("shapes-blip-vqa")
    for layer in ("text_decoder", "text_decoder.cls", "text_decoder.bert.encoder.layer[-1]"):
        with pytest.raises(MMCamError, match="not in the model's image encoder"):
            CaptionExplainer(cap, layer=layer)
    with pytest.raises(MMCamError, match="not in the model's image encoder"):
        VQAExplainer(vqa, layer="text_encoder.encoder.layer[0]")
    img = generate(1, seed=3)[0].image
    r = CaptionExplainer(cap, layer="vision_model.encoder.layers[1]").explain(
        img, caption="a red circle")
    assert r.layer_maps.shape[-2:] == (8, 8)  # the ViT's 8x8 patch grid
    a = VQAExplainer(vqa, layer="vision_model.encoder.layers[-1]").explain(
        img, "what color is the circle?", top_k=1)
    assert a.map.shape == (128, 128)
