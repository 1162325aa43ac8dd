"""The README's Python examples run, in order, in an empty folder holding the files they name.

Blocks that cannot run here are listed with the reason: fragments that continue a user's own
code (names defined by the user), and Hugging Face hub ids (no hub is reachable).
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = {  # first line of the block -> why it is not run
    'ex = CaptionExplainer(model, layer="encoder.layer3")': "a fragment: the user's model",
    "from mmcam import Geometry": "a fragment: the user's preprocessing (TF, MEAN, STD)",
    "from mmcam.adapters.torchvision import build_classifier": "a fragment: the user's weights",
    'cap = mmcam.load_model("hf:': "a hub id",
    'vqa = VQAExplainer(mmcam.load_model("hf:': "a hub id",
}


def blocks(readme: Path = README) -> list[str]:
    """The README's fenced Python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)


def skipped(code: str) -> bool:
    first = code.strip().splitlines()[0]
    return any(first.startswith(k) for k in NOT_RUN) or 'load_model("hf:' in code


def test_readme_python_examples_run(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import skimage
    from PIL import Image

    from mmcam.scenes import generate

    monkeypatch.chdir(tmp_path)
    generate(1, seed=8)[0].image.save("scene.png")
    Image.open(Path(skimage.__file__).parent / "data" / "chelsea.png").convert("RGB").save(
        "photo.jpg")
    namespace: dict = {"__name__": "readme"}
    ran = 0
    for i, code in enumerate(blocks()):
        if skipped(code):
            continue
        try:
            exec(compile(code, f"README.md[block {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block that failed
            raise AssertionError(f"README.md, Python block {i} fails: {e!r}\n{code}") from e
        ran += 1
    assert ran >= 3  # the library tour, the notebook/page calls, your own captioner
    assert (tmp_path / "out" / "index.html").is_file()
    assert (tmp_path / "out" / "mine").is_dir()
    assert namespace["inner"].maps.shape[0] == 5
