"""Procedural "<colour> <shape>" images and captions: the built-in dataset of the demo.

96 classes = 12 colours x 8 shapes, ``CLASSNAMES`` sorted alphabetically (label = index). An image is a
32x32 RGB picture of one shape with random position, size, rotation, colour jitter, a random
low-saturation background (flat or a gradient) and pixel noise. Every random choice is drawn from a
generator seeded by ``(seed, label, index)`` only, so the same arguments always give the same pixels;
splits use disjoint index ranges (the dataset layer decides which).

Domains (a fixed photometric transform of the whole rendered image, after the noise):

- source (``hue=0``): what the built-in tiny CLIP was pretrained on (``mergetune.core.builtin.pretrain``).
- downstream (``hue=DOWNSTREAM_HUE`` = 0.6 rad): the few-shot fine-tuning domain of the demo. A hue
  rotation by ``hue`` radians is a rotation of the chroma (I, Q) plane of YIQ space, so the luma and
  the saturation are kept and the achromatic colours (black, grey, white) are unchanged.
- ``SHIFT_DOMAIN`` (``{"hue": 1.2, "blur": 0.0}``): a second, stronger shift of the same kind, for the
  robust-fine-tuning story of the linear-head variant (a head fine-tuned on the downstream domain is
  evaluated there as "under distribution shift"). ``blur`` (Gaussian radius in pixels) is available
  as another axis.

Rendering draws at 2x and downsamples (antialiased edges); a few thousand images take a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 32
_SS = 2  # supersampling factor

# name -> base RGB. Alphabetical order defines base (first 6) / novel (last 6) colours.
_COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25),
    "blue": (35, 70, 225),
    "brown": (135, 80, 35),
    "cyan": (20, 205, 215),
    "green": (40, 170, 55),
    "grey": (128, 128, 128),
    "magenta": (215, 40, 200),
    "orange": (250, 140, 20),
    "pink": (250, 155, 195),
    "purple": (115, 40, 170),
    "red": (215, 30, 30),
    "yellow": (240, 225, 35),
}
COLOURS: tuple[str, ...] = tuple(sorted(_COLOUR_RGB))
SHAPES: tuple[str, ...] = ("circle", "cross", "heart", "hexagon", "ring", "square", "star", "triangle")
CLASSNAMES: tuple[str, ...] = tuple(sorted(f"{c} {s}" for c in COLOURS for s in SHAPES))
NUM_CLASSES = len(CLASSNAMES)

TEMPLATE = "a photo of a {}."  # zero-shot template of the builtin dataset
DOWNSTREAM_HUE = 0.6
DOWNSTREAM_DOMAIN: dict[str, float] = {"hue": DOWNSTREAM_HUE, "blur": 0.0}
SHIFT_DOMAIN: dict[str, float] = {"hue": 1.2, "blur": 0.0}

# Caption templates for pretraining. Fields: {c} colour, {s} shape, {size} small/large,
# {bg} dark/light/grey, {pos} position phrase.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {s}.",
    "a {c} {s}",
    "a {c} {s}.",
    "{c} {s}",
    "a {size} {c} {s}.",
    "a {size} {c} {s} on a {bg} background",
    "a {c} {s} on a {bg} background.",
    "an image of a {c} {s}.",
    "a picture of a {size} {c} {s}",
    "a drawing of a {c} {s}.",
    "a {c} {s} {pos}.",
    "there is a {c} {s} {pos}",
    "the {s} is {c}.",
    "a {s} coloured {c}",
    "a rendering of a {size} {c} {s}.",
    "a {c} {s} shape.",
)

_CLASS_INDEX = {name: i for i, name in enumerate(CLASSNAMES)}


def class_parts(label: int) -> tuple[str, str]:
    """(colour, shape) of a label."""
    colour, shape = CLASSNAMES[label].split(" ")
    return colour, shape


def label_of(colour: str, shape: str) -> int:
    return _CLASS_INDEX[f"{colour} {shape}"]


def _rng(seed: int, label: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(label), int(index), stream]))


def _regular_polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, rot: float) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, fill
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        ri = r * 0.52
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)  # the mask's background
    elif shape == "square":
        draw.polygon(_regular_polygon(cx, cy, r * 1.05, 4, rot + math.pi / 4), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + r * 0.15, r * 1.1, 3, rot - math.pi / 2), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, rot), fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r * 1.1 if k % 2 == 0 else r * 0.45
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = r * 0.36
        pts = [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
            (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
            (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
        draw.polygon(_rotate(pts, cx, cy, rot), fill=fill)
    elif shape == "heart":
        # two lobes and a point, built in a local frame then rotated
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((cx + x * r / 16.5, cy + y * r / 16.5 - r * 0.05))
        draw.polygon(_rotate(pts, cx, cy, rot), fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")


def _hue_matrix(theta: float) -> np.ndarray:
    """3x3 RGB->RGB matrix rotating the chroma plane of YIQ by ``theta`` radians."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.linalg.inv(to_yiq) @ rot @ to_yiq


def hue_rotate(arr: np.ndarray, theta: float) -> np.ndarray:
    """Rotate the hue of a float RGB array [..., 3] (0..255) by ``theta`` radians (YIQ chroma rotation)."""
    if theta == 0.0:
        return arr
    return arr @ _hue_matrix(theta).T


def render_info(label: int, seed: int, index: int) -> dict:
    """The random scene parameters of ``render(label, seed, index)`` (used by the captions)."""
    rng = _rng(seed, label, index)
    r = float(rng.uniform(6.0, 13.0))
    cx = float(rng.uniform(r * 0.8, IMAGE_SIZE - r * 0.8))
    cy = float(rng.uniform(r * 0.8, IMAGE_SIZE - r * 0.8))
    rot = float(rng.uniform(-math.pi / 6, math.pi / 6))
    jitter = rng.normal(0.0, 14.0, size=3) + rng.normal(0.0, 10.0)  # per channel + brightness
    bg_level = float(rng.uniform(40, 215))
    bg_tint = rng.normal(0.0, 10.0, size=3)
    gradient = rng.normal(0.0, 25.0, size=2) if rng.uniform() < 0.5 else np.zeros(2)
    noise_sigma = float(rng.uniform(3.0, 12.0))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    colour, shape = class_parts(label)
    base = np.asarray(_COLOUR_RGB[colour], dtype=np.float64)
    fg = np.clip(base + jitter, 0, 255)
    # keep the object visible: push the background away from the object's luma
    fg_luma = float(fg @ np.array([0.299, 0.587, 0.114]))
    if abs(bg_level - fg_luma) < 45:
        bg_level = fg_luma + 45 if fg_luma < 128 else fg_luma - 45
    bg_level = float(np.clip(bg_level, 10, 245))
    return {
        "colour": colour,
        "shape": shape,
        "r": r,
        "cx": cx,
        "cy": cy,
        "rot": rot,
        "fg": fg,
        "bg": np.clip(bg_level + bg_tint, 0, 255),
        "gradient": gradient,
        "noise_sigma": noise_sigma,
        "noise_seed": noise_seed,
        "size_word": "small" if r < 9.5 else "large",
        "bg_word": "dark" if bg_level < 95 else ("light" if bg_level > 160 else "grey"),
        "pos_word": _position_word(cx, cy),
    }


def _position_word(cx: float, cy: float) -> str:
    h = "left" if cx < 13 else ("right" if cx > 19 else "")
    v = "top" if cy < 13 else ("bottom" if cy > 19 else "")
    if not h and not v:
        return "in the centre"
    if h and v:
        return f"in the {v} {h}"
    return f"on the {h or v}"


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) / (IMAGE_SIZE - 1) - 0.5


def render(label: int, seed: int, index: int, *, hue: float = 0.0, blur: float = 0.0) -> Image.Image:
    """Render image ``index`` of class ``label`` (32x32 RGB), deterministic in (seed, label, index).

    ``hue``: rotation of the whole image's hue in radians (the domain); ``blur``: Gaussian blur radius.
    """
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label {label} outside 0..{NUM_CLASSES - 1}")
    info = render_info(label, seed, index)
    return _render_from_info(info, hue=hue, blur=blur)


def _render_from_info(info: dict, *, hue: float, blur: float) -> Image.Image:
    n = IMAGE_SIZE * _SS
    mask_img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask_img)
    s = _SS
    _draw_shape(draw, info["shape"], info["cx"] * s, info["cy"] * s, info["r"] * s, info["rot"], 255)
    mask = (
        np.asarray(mask_img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
        / 255.0
    )
    gx, gy = info["gradient"]
    bg = info["bg"][None, None, :] + (gx * _XX + gy * _YY)[:, :, None]
    img = bg * (1.0 - mask[:, :, None]) + info["fg"][None, None, :] * mask[:, :, None]
    noise = np.random.default_rng(info["noise_seed"]).normal(0.0, info["noise_sigma"], size=img.shape)
    img = hue_rotate(img + noise, float(hue))
    out = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(blur)))
    return out


def caption(label: int, seed: int, index: int, template_id: int | None = None) -> str:
    """A pretraining caption of ``render(label, seed, index)``; the template is drawn from the same
    seed unless ``template_id`` is given."""
    info = render_info(label, seed, index)
    if template_id is None:
        template_id = int(_rng(seed, label, index, stream=1).integers(0, len(CAPTION_TEMPLATES)))
    return CAPTION_TEMPLATES[template_id].format(
        c=info["colour"], s=info["shape"], size=info["size_word"], bg=info["bg_word"], pos=info["pos_word"]
    )


def render_with_caption(
    label: int, seed: int, index: int, *, hue: float = 0.0, blur: float = 0.0
) -> tuple[Image.Image, str]:
    info = render_info(label, seed, index)
    tid = int(_rng(seed, label, index, stream=1).integers(0, len(CAPTION_TEMPLATES)))
    text = CAPTION_TEMPLATES[tid].format(
        c=info["colour"], s=info["shape"], size=info["size_word"], bg=info["bg_word"], pos=info["pos_word"]
    )
    return _render_from_info(info, hue=hue, blur=blur), text


def render_array(labels, seed: int, indices, *, hue: float = 0.0, blur: float = 0.0) -> np.ndarray:
    """Render many images into a uint8 array [N, 32, 32, 3]."""
    return np.stack(
        [
            np.asarray(render(int(y), seed, int(i), hue=hue, blur=blur))
            for y, i in zip(labels, indices, strict=True)
        ]
    )
