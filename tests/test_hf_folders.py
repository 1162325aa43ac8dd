"""Damaged Hugging Face model folders and bad model names: one line, never a traceback.

Each broken folder is a copy of the shipped ``models/shapes-blip`` with one thing broken; the
library raises one :class:`MMCamError` naming the folder or file and what is wrong, and the CLI
prints that one line and exits with code 2. Loading a good folder prints nothing and leaves
transformers' progress-bar switch as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import mmcam  # noqa: E402
from mmcam.cli import main  # noqa: E402
from mmcam.errors import MMCamError  # noqa: E402
from mmcam.models.hub import KNOWN_MODELS, REPO_MODELS  # noqa: E402
from mmcam.scenes import generate  # noqa: E402

BLIP = REPO_MODELS / "shapes-blip"


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    generate(1, seed=4242)[0].image.save(path)
    return path


def _copy(d: Path) -> Path:
    return Path(shutil.copytree(BLIP, d / "blip"))


def no_weights(d):
    m = _copy(d)
    (m / "model.safetensors").unlink()
    return m, str(m)


def truncated_weights(d):
    m = _copy(d)
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[:5000])
    return m, str(m / "model.safetensors")


def half_weights(d):
    m = _copy(d)
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    return m, str(m / "model.safetensors")


def text_config_5(d):
    m = _copy(d)
    cfg = json.loads((m / "config.json").read_text())
    cfg["text_config"] = 5
    (m / "config.json").write_text(json.dumps(cfg))
    return m, str(m / "config.json")


def no_tokenizer(d):
    m = _copy(d)
    (m / "tokenizer.json").unlink()
    (m / "tokenizer_config.json").unlink()
    return m, str(m)


def edit_config(change):
    def make(d):
        m = _copy(d)
        cfg = json.loads((m / "config.json").read_text())
        change(cfg)
        (m / "config.json").write_text(json.dumps(cfg))
        return m, str(m)
    return make


def weights_do_not_fit(d):
    m, _ = edit_config(lambda c: c["text_config"].update(hidden_size=48))(d)
    return m, str(m / "model.safetensors")


FOLDER_CASES = [
    (no_weights, "holds no model.safetensors"),
    (truncated_weights, "not a valid safetensors file"),
    (half_weights, "not a valid safetensors file"),
    (text_config_5, "'text_config' has a wrong value (5)"),
    (no_tokenizer, "no tokenizer"),
    (weights_do_not_fit, "they do not fit config.json"),
    (edit_config(lambda c: c.update(architectures=5)),
     "'architectures' in config.json must be a list of class names"),
]


def _one_line(message: str) -> None:
    assert "\n" not in message and message.strip(), message
    assert "<class" not in message and "Traceback" not in message, message


def cli_one_line(capsys, argv, *parts):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mmcam {argv[0]}: error: "), err
    for part in parts:
        assert part in lines[0], err
    assert "Traceback" not in err and "<class" not in err
    return lines[0]


@pytest.mark.parametrize("make,message", FOLDER_CASES)
def test_broken_hf_folder_library(tmp_path, make, message):
    folder, names = make(tmp_path)
    with pytest.raises(MMCamError) as e:
        mmcam.load_model(folder)
    _one_line(str(e.value))
    assert message in str(e.value) and names in str(e.value), str(e.value)


@pytest.mark.parametrize("make,message", FOLDER_CASES)
def test_broken_hf_folder_cli(scene_png, tmp_path, capsys, make, message):
    folder, names = make(tmp_path)
    cli_one_line(capsys, ["caption", str(scene_png), "--model", str(folder),
                          "--out", str(tmp_path / "o")], message, names)
    assert not (tmp_path / "o").exists()


NAME_CASES = [
    ("hf:", "the hub id after hf: is empty"),
    ("hf:  ", "the hub id after hf: is empty"),
    ("", "the model name is empty"),
    ("   ", "the model name is empty"),
    ("hf:../../etc", "hf:../../etc is not a hub id"),
    ("hf:/etc", "hf:/etc is not a hub id"),
    ("hf:~/models/blip", "is not a hub id"),
    ("hf:a/b/c", "is not a hub id"),
    ("hf:bad id!", "is not a hub id"),
]


@pytest.mark.parametrize("name,message", NAME_CASES)
def test_bad_model_name_library(name, message):
    with pytest.raises(MMCamError) as e:
        mmcam.load_model(name)
    _one_line(str(e.value))
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize("name,message", NAME_CASES)
def test_bad_model_name_cli(scene_png, tmp_path, capsys, name, message):
    cli_one_line(capsys, ["caption", str(scene_png), "--model", name,
                          "--out", str(tmp_path / "o")], message)


@pytest.mark.parametrize("argv", [["evaluate-model", "hf:", "--n", "1"],
                                  ["evaluate-explanations", "hf:", "--n", "1", "--out", "OUT"]])
def test_empty_hub_id_in_evaluate_commands(tmp_path, capsys, argv):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    cli_one_line(capsys, argv, "the hub id after hf: is empty")


def test_unknown_model_lists_every_shipped_model(scene_png, tmp_path, capsys):
    with pytest.raises(MMCamError) as e:
        mmcam.load_model("shapes-nope")
    _one_line(str(e.value))
    shipped = [*KNOWN_MODELS, "shapes-blip", "shapes-blip-vqa"]
    for name in shipped:
        assert name in str(e.value), str(e.value)
    cli_one_line(capsys, ["caption", str(scene_png), "--model", "shapes-nope",
                          "--out", str(tmp_path / "o")], "unknown model 'shapes-nope'", *shipped)


def test_good_hf_folder_loads_quietly_and_keeps_the_progress_bar_switch(capfd):
    from transformers.utils import logging as tlog

    before = tlog.is_progress_bar_enabled()
    capfd.readouterr()
    try:
        for state in (True, False):
            (tlog.enable_progress_bar if state else tlog.disable_progress_bar)()
            capfd.readouterr()
            adapter = mmcam.load_model(BLIP)
            out = capfd.readouterr()
            assert out.err == "", out.err
            assert tlog.is_progress_bar_enabled() is state
            assert type(adapter).__name__ == "HFCaptioner"
    finally:
        (tlog.enable_progress_bar if before else tlog.disable_progress_bar)()


def test_good_hf_folder_cli_stderr_is_empty(scene_png, tmp_path, capfd):
    rc = main(["caption", str(scene_png), "--model", "shapes-blip", "--out",
               str(tmp_path / "o")])
    out = capfd.readouterr()
    assert rc == 0, out.err
    assert out.err == "", out.err


def test_load_report_of_a_good_load_still_reaches_transformers_handlers(tmp_path):
    """Records transformers logs while a checkpoint loads are held only to be dropped when the
    load fails (its multi-line report comes before the error); a load that works passes them
    on, and the logger's handlers are set back."""
    import logging

    import torch
    from safetensors.torch import load_file, save_file

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    lg = logging.getLogger("transformers")
    keep = Keep()
    lg.addHandler(keep)
    try:
        before = (list(lg.handlers), lg.propagate)
        extra = _copy(tmp_path / "x")
        state = load_file(extra / "model.safetensors")
        state["extra.weight"] = torch.zeros(2)
        save_file(state, extra / "model.safetensors", metadata={"format": "pt"})
        mmcam.load_model(extra)
        assert any("extra.weight" in m for m in keep.messages), keep.messages
        keep.messages.clear()
        bad, _ = weights_do_not_fit(tmp_path / "y")
        with pytest.raises(MMCamError, match="do not fit"):
            mmcam.load_model(bad)
        assert not any("MISMATCH" in m for m in keep.messages), keep.messages
        assert (list(lg.handlers), lg.propagate) == before
    finally:
        lg.removeHandler(keep)
