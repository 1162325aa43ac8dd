"""The scene world: determinism, ground truth recomputed from the pixels, answers recomputed
from the objects by an independent parser of the question text."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from mmcam import scenes
from mmcam.scenes import generate

N = 120
WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}
SHAPE_OF_PLURAL = {
    "circles": "circle",
    "squares": "square",
    "triangles": "triangle",
    "stars": "star",
    "diamonds": "diamond",
    "crosses": "cross",
}


@pytest.fixture(scope="module")
def world() -> list[scenes.Scene]:
    return generate(N, seed=11)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.where(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def center(mask: np.ndarray) -> tuple[float, float]:
    x0, y0, x1, y1 = bbox(mask)
    return (x0 + x1) / 2, (y0 + y1) / 2


def saturation(pixels: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max per pixel, from the uint8 RGB values."""
    p = pixels.astype(np.float64)
    mx, mn = p.max(-1), p.min(-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)


def test_determinism_and_prefix() -> None:
    a, b = generate(4, seed=3), generate(4, seed=3)
    for s, t in zip(a, b):
        assert np.array_equal(np.asarray(s.image), np.asarray(t.image))
        assert s.captions == t.captions and s.questions == t.questions
        assert [o.box for o in s.objects] == [o.box for o in t.objects]
    c = generate(4, seed=4)
    assert not any(np.array_equal(np.asarray(s.image), np.asarray(t.image)) for s, t in zip(a, c))
    # scene i depends only on (seed, i)
    one = generate(1, seed=3, start=2)[0]
    assert np.array_equal(np.asarray(one.image), np.asarray(a[2].image))
    assert one.captions == a[2].captions


def test_image_format(world: list[scenes.Scene]) -> None:
    for s in world[:10]:
        assert s.image.mode == "RGB" and s.image.size == (128, 128)


def test_masks_and_boxes_agree_with_pixels(world: list[scenes.Scene]) -> None:
    for s in world:
        px = np.asarray(s.image)
        union = np.zeros(px.shape[:2], bool)
        for o in s.objects:
            assert o.mask.dtype == bool and o.mask.shape == (128, 128)
            assert o.mask.any()
            assert not (union & o.mask).any(), "visible masks must be disjoint"
            union |= o.mask
            # every visible pixel has exactly the object's color
            assert (px[o.mask] == np.array(o.rgb)).all()
            assert o.box == bbox(o.mask)
            assert not (o.mask & ~o.full_mask).any()
            assert o.mask.sum() >= 0.7 * o.full_mask.sum()
        # objects are exactly the saturated pixels: background saturation <= 0.3
        sat = saturation(px)
        assert np.array_equal(sat > 0.5, union)
        assert sat[~union].max() <= 0.3 + 1e-6
        # per color: the pixels of that exact RGB are the union of that color's masks
        for color, rgb in scenes.COLORS.items():
            same = (px == np.array(rgb)).all(-1)
            expect = np.zeros_like(same)
            for o in s.objects:
                if o.color == color:
                    expect |= o.mask
            assert np.array_equal(same, expect)


def shape_of(full: np.ndarray) -> str:
    """Identify a rendered shape from its full mask alone: the fraction of its box it fills
    (square 1, circle ~0.78, cross ~0.62, diamond and triangle ~0.5, star ~0.43) and, for
    diamond vs triangle, where its widest row is."""
    x0, y0, x1, y1 = bbox(full)
    crop = full[y0:y1, x0:x1]
    fill = crop.mean()
    if fill > 0.93:
        return "square"
    if fill > 0.7:
        return "circle"
    if fill > 0.56:
        return "cross"
    if fill < 0.48:
        return "star"
    widest = int(np.argmax(crop.sum(1)))
    return "triangle" if widest > 0.75 * crop.shape[0] else "diamond"


def test_attributes_agree_with_pixels(world: list[scenes.Scene]) -> None:
    for s in world:
        for o in s.objects:
            x0, y0, x1, y1 = bbox(o.full_mask)
            extent = max(x1 - x0, y1 - y0)
            assert (extent <= 24) == (o.size == "small"), (o.size, extent)
            assert shape_of(o.full_mask) == o.shape


def test_world_coverage(world: list[scenes.Scene]) -> None:
    objs = [o for s in world for o in s.objects]
    assert {o.shape for o in objs} == set(scenes.SHAPES) and len(scenes.SHAPES) >= 6
    assert {o.color for o in objs} == set(scenes.COLORS) and len(scenes.COLORS) >= 6
    assert {o.size for o in objs} == {"small", "large"}
    assert {len(s.objects) for s in world} == {1, 2, 3, 4}
    assert {s.background for s in world} == set(scenes.BACKGROUNDS)
    for s in world:
        pairs = [(o.color, o.shape) for o in s.objects]
        assert len(set(pairs)) == len(pairs)


def test_one_large_stream() -> None:
    for s in generate(30, seed=5, one_large=True):
        assert sum(o.size == "large" for o in s.objects) == 1


def answer(question: str, s: scenes.Scene) -> tuple[str, str, set[int]]:
    """(type, answer, referred objects) recomputed from the question text and the masks."""
    objs = s.objects

    def find(color: str, shape: str) -> int:
        found = [i for i, o in enumerate(objs) if o.color == color and o.shape == shape]
        assert len(found) == 1, f"{color} {shape} must name exactly one object"
        return found[0]

    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        found = [i for i, o in enumerate(objs) if o.shape == m[1]]
        assert len(found) == 1
        return "color", objs[found[0]].color, set(found)
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        found = [i for i, o in enumerate(objs) if o.color == m[1]]
        assert len(found) == 1
        return "shape", objs[found[0]].shape, set(found)
    if m := re.fullmatch(r"how many (\w+)(?: objects)? are there\?", question):
        w = m[1]
        if w == "objects":
            found = set(range(len(objs)))
        elif w in SHAPE_OF_PLURAL:
            found = {i for i, o in enumerate(objs) if o.shape == SHAPE_OF_PLURAL[w]}
        elif w in ("small", "large"):
            found = {i for i, o in enumerate(objs) if o.size == w}
        else:
            found = {i for i, o in enumerate(objs) if o.color == w}
        return "count", [k for k, v in WORDS.items() if v == len(found)][0], found
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        found = {i for i, o in enumerate(objs) if o.color == m[1] and o.shape == m[2]}
        return "exists", "yes" if found else "no", found
    rel = r"(to the left of|to the right of|above|below)"
    if m := re.fullmatch(rf"is the (\w+) (\w+) {rel} the (\w+) (\w+)\?", question):
        i, j = find(m[1], m[2]), find(m[4], m[5])
        (ax, ay), (bx, by) = center(objs[i].mask), center(objs[j].mask)
        d = {"to the left of": bx - ax, "to the right of": ax - bx, "above": by - ay,
             "below": ay - by}[m[3]]  # fmt: skip
        assert abs(d) >= 12, "a relation is only asked when it is clear"
        return "relation", "yes" if d > 0 else "no", {i, j}
    raise AssertionError(f"unparsed question {question!r}")


def test_answers_agree_with_objects(world: list[scenes.Scene]) -> None:
    types = Counter()
    answers = Counter()
    for s in world:
        assert len(s.questions) == len(s.question_types) == len(s.question_objects)
        for (q, a), t, refs in zip(s.questions, s.question_types, s.question_objects):
            assert answer(q, s) == (t, a, set(refs)), q
            if t == "relation":  # subject first, then the reference object
                assert s.objects[refs[0]].name == re.match(r"is the (\w+ \w+) ", q)[1]
            types[t] += 1
            answers[(t, a)] += 1
    assert set(types) == {"color", "shape", "count", "exists", "relation"}
    # yes/no questions are balanced
    for t in ("exists", "relation"):
        yes, no = answers[(t, "yes")], answers[(t, "no")]
        assert 0.35 < yes / (yes + no) < 0.65


def describe(o: scenes.SceneObject) -> str:
    return f"{o.size} {o.color} {o.shape}"


def test_captions(world: list[scenes.Scene]) -> None:
    triple = re.compile(
        rf"(small|large) ({'|'.join(scenes.COLORS)}) ({'|'.join(scenes.SHAPES)})\b"
    )
    rel = re.compile(
        r"a (\w+ \w+ \w+) (to the left of|to the right of|above|below) a (\w+ \w+ \w+)"
    )
    for s in world:
        assert len(set(s.captions)) >= 5
        names = {describe(o): o for o in s.objects}
        for c in s.captions:
            for m in triple.finditer(c):
                assert m[0] in names, f"{c!r} names an object not in the scene"
            if m := rel.fullmatch(c):
                (ax, ay), (bx, by) = center(names[m[1]].mask), center(names[m[3]].mask)
                d = {"to the left of": bx - ax, "to the right of": ax - bx, "above": by - ay,
                     "below": ay - by}[m[2]]  # fmt: skip
                assert d >= 12, c
        # the first caption lists every object with its attributes, from left to right
        listed = triple.findall(s.captions[0])
        assert sorted(" ".join(t) for t in listed) == sorted(names)
        xs = [center(names[" ".join(t)].mask)[0] for t in listed]
        assert xs == sorted(xs)
        n = len(s.objects)
        counts = [c for c in s.captions if re.fullmatch(r"\w+ shapes? on an? \w+ background", c)]
        assert len(counts) == 1 and WORDS[counts[0].split()[0]] == n


def test_objects_named(world: list[scenes.Scene]) -> None:
    s = next(s for s in world if len(s.objects) >= 3)
    for o in s.objects:
        assert o in s.objects_named(o.color) and o in s.objects_named(o.shape.upper())
        expect = [p for p in s.objects if p.shape == o.shape]
        assert s.objects_named(o.shape) == expect
    assert s.objects_named("giraffe") == []


@pytest.mark.parametrize("kw", [dict(seed=-1), dict(seed=None), dict(seed=1.5), dict(seed=True),
                                dict(n=-1), dict(n=2.0), dict(start=-3)])
def test_generate_refuses_what_is_not_a_non_negative_integer(kw):
    """seed=-1 raised numpy's error, seed=None a TypeError from int(), seed=1.5 was cut to 1."""
    args = {"n": 1, "seed": 0} | kw
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        generate(**args)
