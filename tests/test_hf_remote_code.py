"""Checkpoints that bring their own code (``auto_map``): refused in one line unless
``trust_remote_code`` is on; with it, their class is loaded from the folder and, when it
derives from a family mmcam knows, explained as that family, with the same maps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mmcam
from mmcam import CaptionExplainer
from mmcam.errors import MMCamError
from tests.test_hf import save_blip
from tests.toys import image

CONFIG_PY = '''from transformers import BlipConfig


class MyBlipConfig(BlipConfig):
    model_type = "my_blip"
'''
MODELING_PY = '''from transformers import BlipForConditionalGeneration

from .configuration_my_blip import MyBlipConfig


class MyBlipForConditionalGeneration(BlipForConditionalGeneration):
    config_class = MyBlipConfig
    RAN_OWN_CODE = True
'''


def save_own_code_blip(path):
    """A tiny BLIP saved as a checkpoint with its own configuration and model classes."""
    save_blip(path)
    (path / "configuration_my_blip.py").write_text(CONFIG_PY)
    (path / "modeling_my_blip.py").write_text(MODELING_PY)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="my_blip", architectures=["MyBlipForConditionalGeneration"],
               auto_map={"AutoConfig": "configuration_my_blip.MyBlipConfig",
                         "AutoModelForImageTextToText":
                             "modeling_my_blip.MyBlipForConditionalGeneration"})
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_own_code_is_refused_in_one_line_unless_trusted(tmp_path):
    folder = save_own_code_blip(tmp_path / "own")
    with pytest.raises(MMCamError, match="trust_remote_code=True") as err:
        mmcam.load_model(folder)
    assert "\n" not in str(err.value)
    ad = mmcam.load_model(folder, trust_remote_code=True)
    assert type(ad.model).__name__ == "MyBlipForConditionalGeneration"
    assert getattr(type(ad.model), "RAN_OWN_CODE", False)
    # the same weights through the plain transformers class: the same maps
    plain = mmcam.load_model(save_blip(tmp_path / "plain"))
    assert type(plain.model).__name__ == "BlipForConditionalGeneration"
    img = image(3, (40, 36))
    for strategy in ("vjp", "readers"):
        a = CaptionExplainer(ad, method="hirescam", strategy=strategy).explain(
            img, "a big red circle")
        b = CaptionExplainer(plain, method="hirescam", strategy=strategy).explain(
            img, "a big red circle")
        assert float(b.layer_maps.abs().max()) > 0
        torch.testing.assert_close(a.layer_maps, b.layer_maps, rtol=0, atol=0)
        assert a.logprobs == b.logprobs


def test_cli_trust_remote_code(tmp_path):
    folder = save_own_code_blip(tmp_path / "own")
    img = tmp_path / "img.png"
    image(5, (40, 36)).save(img)
    cmd = [sys.executable, "-m", "mmcam", "caption", str(img), "--model", str(folder),
           "--caption", "a big red circle", "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "--trust-remote-code" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(cmd + ["--trust-remote-code"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[1:5]] == ["a", "big", "red",
                                                                       "circle"]
