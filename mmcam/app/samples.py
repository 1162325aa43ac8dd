"""Sample images (fresh scenes with ground truth, scikit-image's photos) and uploads."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmcam.errors import MMCamError
from mmcam.images import load_image

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
SCENE_SEED = 777  # the app's scene stream; scene indices are drawn at random (fresh scenes)
MAX_SIDE = 512  # larger images are shrunk: the models see 128x128, and a session keeps
# every map at the image's size (n_words x H x W floats)
N_SCENES = 5


def photos() -> dict[str, Path]:
    """Real photos shipped with scikit-image (an optional dependency): name -> path."""
    try:
        import skimage
    except ImportError:
        return {}
    data = Path(os.path.dirname(skimage.__file__)) / "data"
    return {Path(f).stem: data / f for f in PHOTOS if (data / f).is_file()}


def scene_label(index: int) -> str:
    """Dropdown label of scene ``index`` of the app's scene stream."""
    return f"scene {index}"


def make_scene(index: int, one_large: bool = False) -> Any:
    """Scene ``index`` of the app's stream (``one_large``: the classifier's kind of scene)."""
    from mmcam import scenes

    return scenes.generate(1, SCENE_SEED, start=index, one_large=one_large)[0]


def fresh_indices(n: int = N_SCENES) -> list[int]:
    """``n`` random scene indices: scenes no one has seen before, with high probability."""
    return [random.randrange(10**6, 10**9) for _ in range(n)]


def sample_choices(indices: list[int]) -> list[str]:
    """Sample dropdown entries: scenes first, then the photos that exist."""
    return [scene_label(i) for i in indices] + [f"photo: {p}" for p in photos()]


def load_sample(label: str, one_large: bool = False) -> tuple[Image.Image, Any]:
    """(image, scene or None) for a sample dropdown entry."""
    if label and label.startswith("scene "):
        try:
            index = int(label.split()[1])
        except (IndexError, ValueError):
            index = -1
        if index < 0:
            raise MMCamError(f"unknown sample {label!r}: scenes are 'scene N' with N >= 0")
        scene = make_scene(index, one_large)
        return scene.image, scene
    if label and label.startswith("photo: "):
        path = photos().get(label[len("photo: "):])
        if path is None:
            raise MMCamError(f"the photo {label!r} is not installed (scikit-image's data)")
        return fit(load_image(path)), None
    raise MMCamError("pick a sample from the list")


def fit(image: Image.Image) -> Image.Image:
    """Shrink an image whose longest side exceeds MAX_SIDE (aspect kept)."""
    if max(image.size) <= MAX_SIDE:
        return image
    s = MAX_SIDE / max(image.size)
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))),
                        Image.BILINEAR)


def read_image(path: Any) -> Image.Image:
    """The image given to an event (a file path from gr.Image), checked and fitted."""
    if path is None or (isinstance(path, str) and not path):
        raise MMCamError("no image: upload one or pick a sample first")
    try:
        image = load_image(path)
    except MMCamError as e:
        name = Path(str(path)).name
        reason = str(e).replace(f": {path}", "").replace(str(path), name)
        raise MMCamError(f"cannot read the uploaded file {name!r} ({reason}): upload a PNG "
                         "or JPEG image") from None
    return fit(image)


def truth_of(scene: Any, image: Image.Image) -> Any:
    """``scene`` if ``image`` is exactly its picture, else None."""
    if scene is None or scene.image.size != image.size:
        return None
    return scene if np.array_equal(np.asarray(scene.image), np.asarray(image)) else None
