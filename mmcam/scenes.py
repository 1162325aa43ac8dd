"""A synthetic scene world with ground truth: shapes on textured backgrounds.

Every scene is a 128x128 RGB image with 1 to 4 flat-colored objects drawn over a textured
background, plus everything needed to check an explanation against it: per object its shape,
color, size, pixel mask of the *visible* pixels and the tight box of that mask; captions; and
question/answer pairs of five types.

The world
    shapes  circle, square, triangle, star, diamond, cross
    colors  red, green, blue, yellow, purple, orange (flat, saturated: HSV saturation >= 0.7)
    sizes   small (extent 18-22 px), large (extent 34-40 px)
    backgrounds  noise, gradient, stripes, checker; every background pixel has HSV
                 saturation <= 0.3, so no background pixel has an object's color.

Objects are drawn in order, later ones on top, at random positions (rejection sampling): every
object keeps at least 70% of its pixels visible (``MIN_VISIBLE``), objects of the same color do
not touch (2 px gap, so they never merge into one silhouette), and no two objects share
(color, shape), so "the red circle" always names exactly one object.

Text
    captions  6-7 per scene from templates: every object with size, color and shape from left
              to right; count and background; the clearest horizontal and vertical relation
              ("... to the left of ...", "... above ..."), or the region of a lone object;
              colors and shapes without sizes; counts by size; the colors.
    questions types "color" (of a named, unique shape), "shape" (of a unique color), "count"
              (objects, a shape, a color, a size; answers "zero".."four"), "exists" (yes/no,
              half of the negatives share a color or shape with a present object), "relation"
              (yes/no, only for clear relations). ``question_objects`` names the objects each
              question refers to.

Geometry
    box = (x0, y0, x1, y1) = tight box of the visible mask, x1 and y1 exclusive.
    center = ((x0 + x1) / 2, (y0 + y1) / 2).
    "A is to the left of B"  iff  center_x(B) - center_x(A) >= RELATION_MARGIN (12 px);
    "A is above B"           iff  center_y(B) - center_y(A) >= RELATION_MARGIN.
    A relation is stated or asked only when one of these holds in one direction or the other,
    so every statement and every answer is unambiguous.

Scene ``i`` of ``generate(n, seed, start)`` depends only on ``(seed, start + i)``, so
``generate(10, s)[:3] == generate(3, s)`` pixel for pixel.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 128
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "diamond": "diamonds",
    "cross": "crosses",
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 200),
    "orange": (245, 140, 30),
}
SIZES: dict[str, tuple[int, int]] = {"small": (18, 22), "large": (34, 40)}  # extent range, px
BACKGROUNDS: tuple[str, ...] = ("noise", "gradient", "stripes", "checker")
BACKGROUND_WORDS: dict[str, str] = {
    "noise": "noisy",
    "gradient": "smooth",
    "stripes": "striped",
    "checker": "checkered",
}
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "exists", "relation")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
WORD_KINDS: dict[str, tuple[str, ...]] = {  # words of one kind: a word's alternatives
    "color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES), "number": NUMBERS,
    "yes/no": ("yes", "no"),
}
MAX_OBJECTS = 4
MIN_VISIBLE = 0.7
RELATION_MARGIN = 12.0
BACKGROUND_MAX_SATURATION = 0.3


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object: ``mask`` is the bool (H,W) mask of its visible pixels, ``box`` its tight box
    (x0, y0, x1, y1) with x1, y1 exclusive; ``full_mask`` includes the occluded pixels."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]
    mask: np.ndarray
    full_mask: np.ndarray

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The object's fill color; every pixel of ``mask`` has exactly this RGB value."""
        return COLORS[self.color]

    @property
    def center(self) -> tuple[float, float]:
        """Center (x, y) of ``box``."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    @property
    def area(self) -> int:
        """Number of visible pixels."""
        return int(self.mask.sum())

    @property
    def name(self) -> str:
        """Unique name in its scene, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True, eq=False)
class Scene:
    """A 128x128 RGB scene and its ground truth.

    ``questions[k]`` is a (question, answer) pair of type ``question_types[k]``;
    ``question_objects[k]`` holds the indices into ``objects`` of the objects it refers to
    (named objects in the order named, counted objects, or the object whose existence is
    asked if it exists).
    """

    image: Image.Image
    objects: tuple[SceneObject, ...]
    background: str
    captions: list[str]
    questions: list[tuple[str, str]]
    question_types: list[str]
    question_objects: list[tuple[int, ...]]
    seed: int
    index: int

    def objects_named(self, word: str) -> list[SceneObject]:
        """Objects whose color, shape, plural shape or size equals ``word`` (case-insensitive)."""
        w = word.lower()
        return [o for o in self.objects if w in (o.color, o.shape, PLURALS[o.shape], o.size)]


# ---------------------------------------------------------------- rendering


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized HSV (all in [0,1]) -> uint8 RGB (H,W,3)."""
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.round(np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def _background(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A (128,128,3) uint8 background with HSV saturation <= BACKGROUND_MAX_SATURATION."""
    n = IMAGE_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    h1, h2 = rng.random(), rng.random()
    s1, s2 = rng.uniform(0.0, 0.25, size=2)
    v1, v2 = rng.uniform(0.25, 0.9, size=2)
    if abs(v1 - v2) < 0.15:  # keep the two tones of a texture apart
        v2 = v1 + 0.2 if v1 < 0.6 else v1 - 0.2
    if kind == "noise":
        h = np.full((n, n), h1)
        s = np.clip(s1 + rng.normal(0, 0.03, (n, n)), 0, 0.25)
        v = np.clip(v1 + rng.normal(0, 0.12, (n, n)), 0.1, 0.95)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        proj = (xx - n / 2) * np.cos(a) + (yy - n / 2) * np.sin(a)
        t = (proj - proj.min()) / (proj.max() - proj.min())
        h = np.where(np.abs(h1 - h2) > 0.5, h1, h1 + (h2 - h1) * t)  # short way round the hue
        s = s1 + (s2 - s1) * t
        v = v1 + (v2 - v1) * t
    else:
        period = rng.integers(6, 17)
        if kind == "stripes":
            a = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
            proj = xx * np.cos(a) + yy * np.sin(a)
            on = (np.floor(proj / period) % 2).astype(bool)
        elif kind == "checker":
            on = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
        else:
            raise ValueError(f"unknown background kind {kind!r}")
        h = np.where(on, h1, h2)
        s = np.where(on, s1, s2)
        v = np.where(on, v1, v2)
        v = np.clip(v + rng.normal(0, 0.03, (n, n)), 0.1, 0.95)
    s = np.clip(s, 0.0, BACKGROUND_MAX_SATURATION)
    return _hsv_to_rgb(h, s, v)


def _polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` (not circle) centered at (cx, cy) within an extent x extent box."""
    r = extent / 2.0
    if shape == "square":
        r *= 0.9  # a square fills its box; shrink it so sizes look alike across shapes
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.5
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
        return pts
    if shape == "cross":
        w = r * 0.36
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, cx: float, cy: float, extent: float) -> np.ndarray:
    """Bool (128,128) mask of a full, unoccluded shape (PIL rasterization, no antialiasing)."""
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        r = extent / 2.0
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon(_polygon(shape, cx, cy, extent), fill=1)
    return np.asarray(canvas, dtype=bool)


def _dilate(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Grow a bool mask by ``r`` px (a (2r+1)x(2r+1) square max filter, separable)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, r + 1):
            out |= np.roll(src, d, axis=axis) | np.roll(src, -d, axis=axis)
    return out


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _place_objects(
    rng: np.random.Generator, one_large: bool = False
) -> list[tuple[str, str, str, np.ndarray]]:
    """Sample 1-4 (shape, color, size, full mask), bottom to top, all >= 70% visible.

    With ``one_large`` exactly one object (at a random drawing position) is large.
    """
    n_obj = int(rng.integers(1, MAX_OBJECTS + 1))
    large_at = int(rng.integers(n_obj))
    while True:
        placed: list[tuple[str, str, str, np.ndarray]] = []
        for _ in range(200):
            if len(placed) == n_obj:
                break
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = list(COLORS)[rng.integers(len(COLORS))]
            if any(p[0] == shape and p[1] == color for p in placed):
                continue
            size = "small" if rng.random() < 0.5 else "large"
            if one_large:
                size = "large" if len(placed) == large_at else "small"
            lo, hi = SIZES[size]
            extent = float(rng.uniform(lo, hi))
            margin = extent / 2 + 2
            cx = float(rng.uniform(margin, IMAGE_SIZE - margin))
            cy = float(rng.uniform(margin, IMAGE_SIZE - margin))
            full = shape_mask(shape, cx, cy, extent)
            if not full.any():
                continue
            same = [p[3] for p in placed if p[1] == color]
            if same and (_dilate(full) & np.logical_or.reduce(same)).any():
                continue  # same-colored objects would merge into one silhouette
            # every object below must keep >= MIN_VISIBLE of its pixels
            cover = full.copy()
            ok = True
            for k in range(len(placed) - 1, -1, -1):
                below = placed[k][3]
                visible = below & ~cover
                if visible.sum() < MIN_VISIBLE * below.sum():
                    ok = False
                    break
                cover |= below
            if ok:
                placed.append((shape, color, size, full))
        if len(placed) == n_obj:
            return placed


# ---------------------------------------------------------------- language


def _a(word: str) -> str:
    """Indefinite article for ``word``: "a" or "an"."""
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a: SceneObject, b: SceneObject) -> list[str]:
    """The relations that clearly hold for "a <relation> b" (see the module docstring)."""
    (ax, ay), (bx, by) = a.center, b.center
    out = []
    if bx - ax >= RELATION_MARGIN:
        out.append("to the left of")
    if ax - bx >= RELATION_MARGIN:
        out.append("to the right of")
    if by - ay >= RELATION_MARGIN:
        out.append("above")
    if ay - by >= RELATION_MARGIN:
        out.append("below")
    return out


_OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def _region(o: SceneObject) -> str:
    """Where a lone object is, by thirds of the image."""
    x, y = o.center
    col = 0 if x < IMAGE_SIZE / 3 else (2 if x >= 2 * IMAGE_SIZE / 3 else 1)
    row = 0 if y < IMAGE_SIZE / 3 else (2 if y >= 2 * IMAGE_SIZE / 3 else 1)
    return [
        ["in the top left corner", "at the top", "in the top right corner"],
        ["on the left", "in the center", "on the right"],
        ["in the bottom left corner", "at the bottom", "in the bottom right corner"],
    ][row][col]


def _count_phrase(n: int, word: str, plural: str) -> str:
    return f"{NUMBERS[n]} {word if n == 1 else plural}"


def make_captions(objects: tuple[SceneObject, ...], background: str) -> list[str]:
    """Six or seven distinct captions; objects are listed from left to right."""
    objs = sorted(objects, key=lambda o: (o.center[0], o.center[1]))
    n = len(objs)
    full = [f"a {o.size} {o.color} {o.shape}" for o in objs]  # sizes start with a consonant
    plain = [f"{_a(o.color)} {o.color} {o.shape}" for o in objs]
    caps = [_join(full)]
    caps.append(
        f"{_count_phrase(n, 'shape', 'shapes')} on a {BACKGROUND_WORDS[background]} background"
    )
    if n == 1:
        caps.append(f"{full[0]} {_region(objs[0])}")
    else:
        # clearest horizontal and clearest vertical relation, subject = the one listed first
        for axis in (0, 1):
            best = None
            for i in range(n):
                for j in range(i + 1, n):
                    d = abs(objs[i].center[axis] - objs[j].center[axis])
                    if d >= RELATION_MARGIN and (best is None or d > best[0]):
                        best = (d, i, j)
            if best is not None:
                _, i, j = best
                rel = [
                    r
                    for r in _relation(objs[i], objs[j])
                    if (r in ("above", "below")) == (axis == 1)
                ][0]
                caps.append(f"{full[i]} {rel} {full[j]}")
    caps.append(f"the picture shows {_join(plain)}")
    n_small = sum(o.size == "small" for o in objs)
    parts = []
    if n_small:
        parts.append(_count_phrase(n_small, "small shape", "small shapes"))
    if n - n_small:
        parts.append(_count_phrase(n - n_small, "large shape", "large shapes"))
    caps.append(" and ".join(parts))
    if n == 1:
        caps.append(f"the shape is {objs[0].color}")
    else:
        caps.append(f"the shapes are {_join([o.color for o in objs])}")
    return caps


def make_questions(
    objects: tuple[SceneObject, ...], rng: np.random.Generator
) -> tuple[list[tuple[str, str]], list[str], list[tuple[int, ...]]]:
    """Question/answer pairs, their types, and the indices (into ``objects``) of the objects
    each question refers to: the named object(s) in the order named (relation: subject, then
    reference), the objects counted (count), the object asked about if present (exists)."""
    qa: list[tuple[str, str, str, tuple[int, ...]]] = []
    objs = list(objects)
    colors = [o.color for o in objs]
    shapes = [o.shape for o in objs]
    pairs = {(o.color, o.shape) for o in objs}

    def where(pred: Callable[[SceneObject], bool]) -> tuple[int, ...]:
        return tuple(i for i, o in enumerate(objs) if pred(o))

    # color of a named shape (the shape must be unique in the scene)
    for i, o in enumerate(objs):
        if shapes.count(o.shape) == 1:
            qa.append((f"what color is the {o.shape}?", o.color, "color", (i,)))
    # shape of a named color (the color must be unique in the scene)
    for i, o in enumerate(objs):
        if colors.count(o.color) == 1:
            qa.append((f"what shape is the {o.color} object?", o.shape, "shape", (i,)))
    # counts: all objects, one shape, one color, one size (present or absent)
    qa.append(("how many objects are there?", NUMBERS[len(objs)], "count", where(bool)))
    s = SHAPES[rng.integers(len(SHAPES))]
    refs = where(lambda o: o.shape == s)
    qa.append((f"how many {PLURALS[s]} are there?", NUMBERS[len(refs)], "count", refs))
    c = list(COLORS)[rng.integers(len(COLORS))]
    refs = where(lambda o: o.color == c)
    qa.append((f"how many {c} objects are there?", NUMBERS[len(refs)], "count", refs))
    z = ("small", "large")[rng.integers(2)]
    refs = where(lambda o: o.size == z)
    qa.append((f"how many {z} objects are there?", NUMBERS[len(refs)], "count", refs))
    # existence: two present pairs (or as many as there are) and as many absent ones,
    # half of the absent ones sharing a color or a shape with a present object
    present = [int(k) for k in rng.permutation(len(objs))[:2]]
    for i in present:
        o = objs[i]
        qa.append((f"is there {_a(o.color)} {o.color} {o.shape}?", "yes", "exists", (i,)))
    for k in range(len(present)):
        for _ in range(100):
            if k % 2 == 0:
                ref = objs[rng.integers(len(objs))]
                if rng.random() < 0.5:
                    cand = (ref.color, SHAPES[rng.integers(len(SHAPES))])
                else:
                    cand = (list(COLORS)[rng.integers(len(COLORS))], ref.shape)
            else:
                cand = (list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))])
            if cand not in pairs:
                q = f"is there {_a(cand[0])} {cand[0]} {cand[1]}?"
                qa.append((q, "no", "exists", ()))
                break
    # relations between two objects where the relation is clear; yes and no alike
    rel_pairs = [
        (i, j) for i in range(len(objs)) for j in range(len(objs)) if i != j and
        _relation(objs[i], objs[j])
    ]  # fmt: skip
    for k in rng.permutation(len(rel_pairs))[:3]:
        i, j = rel_pairs[k]
        a, b = objs[i], objs[j]
        true_rels = _relation(a, b)
        rel = true_rels[rng.integers(len(true_rels))]
        if rng.random() < 0.5:
            rel, ans = _OPPOSITE[rel], "no"
        else:
            ans = "yes"
        q = f"is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?"
        qa.append((q, ans, "relation", (i, j)))
    return [(q, a) for q, a, _, _ in qa], [t for _, _, t, _ in qa], [r for *_, r in qa]


# ---------------------------------------------------------------- generation


def _scene(seed: int, index: int, one_large: bool = False) -> Scene:
    rng = np.random.default_rng([seed, index, 1] if one_large else [seed, index])
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    pixels = _background(rng, background)
    placed = _place_objects(rng, one_large)
    objects = []
    for k, (shape, color, size, full) in enumerate(placed):
        pixels[full] = COLORS[color]
        visible = full.copy()
        for above in placed[k + 1 :]:
            visible &= ~above[3]
        objects.append(SceneObject(shape, color, size, _box(visible), visible, full))
    objs = tuple(objects)
    questions, types, refs = make_questions(objs, rng)
    return Scene(
        image=Image.fromarray(pixels),
        objects=objs,
        background=background,
        captions=make_captions(objs, background),
        questions=questions,
        question_types=types,
        question_objects=refs,
        seed=seed,
        index=index,
    )


def generate(
    n: int,
    seed: int,
    start: int = 0,
    one_large: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Scene]:
    """Return scenes ``start .. start+n-1`` of the world with this ``seed`` (128x128 RGB).

    Deterministic: the same (seed, index) always gives the same pixels, captions and
    questions. ``one_large=True`` draws from a separate stream of scenes in which exactly one
    object is large (the classification task: name its shape). ``progress(k)`` is called
    with 1 after each scene if given.
    """
    for name, value in (("n", n), ("seed", seed), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    out = []
    for i in range(start, start + n):
        out.append(_scene(int(seed), i, one_large))
        if progress is not None:
            progress(1)
    return out
