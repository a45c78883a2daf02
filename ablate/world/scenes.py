"""What the synthetic world draws and says; pure generation from a numpy Generator (the files, splits and
loading are ablate.world.dataset).

Each class is a (colour, shape) pair; colours and shapes are shared between classes, so telling
"red circle" from "red triangle" needs both attributes. An image holds 1-4 distinct classes
(Zipf-like class prior, a few pairs that tend to co-occur), at random positions, sizes and
rotations with partial occlusion, over a gradient + noise background with clutter strokes and
distractor shapes whose (colour, shape) pair is not a class.

Captions come in two styles, one list of variants per image:
- presence: name present classes only (all of them, or sometimes a subset), in varied templates
  and orders (what web captions look like: they describe what is there, never what is absent);
- negation: the same captions, each extended with probability NEGATION_RATE by "... and no
  {absent}" for 1-2 truly absent classes, chosen among plausible ones (sharing a colour or shape
  with, or usually co-occurring with, a present class), as in seed 002's recipe.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

WORLD_CLASSES = [
    "red circle", "blue square", "green triangle", "yellow star", "white cross", "black ring",
    "orange circle", "purple square", "red triangle", "blue star", "green cross", "yellow ring",
    "purple circle", "orange triangle", "white square", "black star",
]
NEGATION_RATE = 0.5  # share of negation-style captions that carry a negation
PARTIAL_RATE = 0.4  # share of multi-object captions that name only some of the present classes

_COLOURS = {
    "red": (215, 35, 35), "blue": (35, 70, 225), "green": (30, 165, 60), "yellow": (235, 215, 40),
    "white": (245, 245, 245), "black": (15, 15, 15), "orange": (245, 135, 25), "purple": (140, 50, 190),
}
_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
_CLASS_PAIRS = [tuple(name.split()) for name in WORLD_CLASSES]
# Distractors: colour/shape pairs of the palette that are not classes (never captioned).
_DISTRACTORS = [(c, s) for c in _COLOURS for s in _SHAPES if (c, s) not in _CLASS_PAIRS]
# Zipf-like class prior in list order: the head class is ~5x as frequent as the tail.
_PRIOR = 1.0 / np.arange(1, len(WORLD_CLASSES) + 1) ** 0.6
_PRIOR /= _PRIOR.sum()
# Pairs that tend to appear together (like person + bicycle); picked with probability _PAIR_RATE.
_PAIRS = [(0, 3), (1, 4), (2, 5), (6, 7), (9, 11), (10, 14)]
_PARTNERS = {c: [b if a == c else a for a, b in _PAIRS if c in (a, b)] for c in range(len(WORLD_CLASSES))}
_PAIR_RATE = 0.5
_N_OBJECTS_P = (0.3, 0.35, 0.22, 0.13)  # 1..4 classes per image
_MAX_OCCLUSION = 0.3  # a later object may cover at most this share of any one earlier object's box
_SUPERSAMPLE = 2  # drawn at 2x and downsampled: anti-aliased edges

_PRESENCE_TEMPLATES = (
    "{}", "a photo of {}", "an image of {}", "a picture with {}", "there is {} in the picture",
    "a drawing showing {}", "a photo of {} on a textured background",
)
_NEGATION_TEMPLATES = ("{} and no {}", "{}, but no {}", "{}, without {}", "{}; there is no {}")


# ---- drawing ------------------------------------------------------------------------------------


def _polygon(n: int, cx: float, cy: float, r: float, angle: float, inner: float | None = None) -> list:
    """Regular n-gon (or an n-pointed star with inner radius `inner` x r) around (cx, cy)."""
    steps = 2 * n if inner else n
    radii = [r if k % 2 == 0 or not inner else r * inner for k in range(steps)]
    thetas = angle + np.arange(steps) * 2 * np.pi / steps
    return [(cx + rad * np.sin(t), cy - rad * np.cos(t)) for rad, t in zip(radii, thetas)]


def _cross(cx: float, cy: float, r: float, angle: float) -> list:
    h = 0.32 * r  # half the arm width
    pts = [(h, r), (h, h), (r, h), (r, -h), (h, -h), (h, -r), (-h, -r), (-h, -h), (-r, -h), (-r, h), (-h, h), (-h, r)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
          colour) -> tuple[float, float, float, float]:
    """Draw one shape; return the box (x0, y0, x1, y1) of what was drawn, before clipping to the image."""
    if shape in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, round(0.38 * r)))
        return box
    if shape == "square":
        points = _polygon(4, cx, cy, r * 1.2, angle)
    elif shape == "triangle":
        points = _polygon(3, cx, cy, r * 1.15, angle)
    elif shape == "star":
        points = _polygon(5, cx, cy, r * 1.15, angle, inner=0.45)
    elif shape == "cross":
        points = _cross(cx, cy, r, angle)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    draw.polygon(points, fill=colour)
    xs, ys = zip(*points)
    return min(xs), min(ys), max(xs), max(ys)


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255))


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """Gradient between two muted colours plus pixel noise."""
    a, b = rng.uniform(70, 190, 3), rng.uniform(70, 190, 3)
    t = np.linspace(0, 1, side)[:, None, None]
    grad = a + (b - a) * t
    grad = grad if rng.random() < 0.5 else grad.transpose(1, 0, 2)
    pixels = np.broadcast_to(grad, (side, side, 3)) + rng.normal(0, 12, (side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _overlap(box: tuple, other: tuple) -> float:
    """Share of `other`'s area that `box` covers (boxes as x0, y0, x1, y1)."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    area = (other[2] - other[0]) * (other[3] - other[1])
    return max(w, 0) * max(h, 0) / area


def _place(rng: np.random.Generator, side: int, placed: list[tuple]) -> tuple[float, float, float]:
    """(cx, cy, r) of a new object; the candidate occluding earlier ones least, among a few tries."""
    best, best_cover = None, 2.0
    for _ in range(30):
        r = rng.uniform(0.1, 0.2) * side
        cx, cy = rng.uniform(r, side - r, 2)
        box = (cx - r, cy - r, cx + r, cy + r)
        cover = max((_overlap(box, p) for p in placed), default=0.0)
        if cover < best_cover:
            best, best_cover = (cx, cy, r), cover
        if cover <= _MAX_OCCLUSION:
            break
    assert best is not None  # the first candidate always replaces it: an overlap is at most 1
    return best


def render(rng: np.random.Generator, size: int, classes: list[int]) -> tuple[Image.Image, list]:
    """One image and its (class index, [x, y, w, h]) objects in output pixels."""
    side = size * _SUPERSAMPLE
    img = _background(rng, side)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):  # clutter strokes
        grey = int(rng.integers(40, 220))
        draw.line([tuple(rng.uniform(0, side, 2)) for _ in range(2)], fill=(grey,) * 3, width=int(rng.integers(1, 4)))
    for _ in range(int(rng.choice(3, p=(0.5, 0.35, 0.15)))):  # distractors, under the objects
        colour, shape = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
        r = rng.uniform(0.06, 0.14) * side
        cx, cy = rng.uniform(r, side - r, 2)
        _draw(draw, shape, cx, cy, r, rng.uniform(0, 2 * np.pi), _jitter(rng, _COLOURS[colour]))
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    for c in classes:
        cx, cy, r = _place(rng, side, placed)
        colour, shape = _CLASS_PAIRS[c]
        x0, y0, x1, y1 = _draw(draw, shape, cx, cy, r, rng.uniform(0, 2 * np.pi), _jitter(rng, _COLOURS[colour]))
        placed.append((cx - r, cy - r, cx + r, cy + r))
        x0, y0, x1, y1 = (float(np.clip(v, 0, side)) / _SUPERSAMPLE for v in (x0, y0, x1, y1))  # visible part
        objects.append((c, [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]))
    return img.resize((size, size), Image.Resampling.BOX), objects


def sample_classes(rng: np.random.Generator, forced: int | None) -> list[int]:
    n = int(rng.choice(4, p=_N_OBJECTS_P)) + 1
    chosen = [int(rng.choice(len(WORLD_CLASSES), p=_PRIOR))]
    while len(chosen) < n:
        partners = [p for c in chosen for p in _PARTNERS.get(c, ()) if p not in chosen]
        if partners and rng.random() < _PAIR_RATE:
            chosen.append(partners[int(rng.integers(len(partners)))])
            continue
        prior = _PRIOR.copy()
        prior[chosen] = 0
        chosen.append(int(rng.choice(len(WORLD_CLASSES), p=prior / prior.sum())))
    if forced is not None and forced not in chosen:
        chosen[0] = forced
    return chosen


# ---- captions -----------------------------------------------------------------------------------


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _name_list(rng: np.random.Generator, names: list[str]) -> str:
    items = [_article(n) for n in rng.permutation(names).tolist()]
    if len(items) == 1:
        return items[0]
    if rng.random() < 0.3:
        return ", ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def presence_caption(rng: np.random.Generator, classes: list[int]) -> str:
    """Names present classes only: all of them, or with probability PARTIAL_RATE a random
    non-empty subset (web captions mention what is salient, not everything)."""
    named = list(classes)
    if len(classes) > 1 and rng.random() < PARTIAL_RATE:
        named = rng.choice(classes, size=int(rng.integers(1, len(classes))), replace=False).tolist()
    template = _PRESENCE_TEMPLATES[int(rng.integers(len(_PRESENCE_TEMPLATES)))]
    return template.format(_name_list(rng, [WORLD_CLASSES[c] for c in named]))


def _plausible_absent(rng: np.random.Generator, classes: list[int], k: int) -> list[int]:
    """k absent classes, favouring ones a captioner would plausibly mention (seed 002, step 1)."""
    present = [_CLASS_PAIRS[c] for c in classes]
    absent = [c for c in range(len(WORLD_CLASSES)) if c not in classes]
    weights = np.array([
        1.0 + 3.0 * any(a == p[0] or b == p[1] for p in present)
        + 3.0 * any(c in _PARTNERS.get(q, ()) for q in classes)
        for c in absent for a, b in [_CLASS_PAIRS[c]]
    ])
    picked = rng.choice(len(absent), size=min(k, len(absent)), replace=False, p=weights / weights.sum())
    return [absent[i] for i in picked]


def negation_caption(rng: np.random.Generator, caption: str, classes: list[int]) -> str:
    """`caption`, with probability NEGATION_RATE followed by a negation of 1-2 absent classes."""
    if rng.random() >= NEGATION_RATE:
        return caption
    absent = [WORLD_CLASSES[c] for c in _plausible_absent(rng, classes, 1 + int(rng.random() < 0.3))]
    template = _NEGATION_TEMPLATES[int(rng.integers(len(_NEGATION_TEMPLATES)))]
    with_article = "without" in template  # "without a X or a Y", but "no X or Y"
    return template.format(caption, " or ".join(_article(a) if with_article else a for a in absent))
