"""Images: procedural scenes and the captions of what was drawn."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# ---------------------------------------------------------------------------------------
# Images: procedural scenes and captions
# ---------------------------------------------------------------------------------------

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (240, 140, 30),
    "yellow": (245, 215, 45),
    "green": (45, 150, 60),
    "blue": (40, 80, 200),
    "purple": (125, 60, 165),
    "pink": (235, 125, 170),
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "grey": (130, 130, 130),
    "teal": (30, 140, 140),
}
_SKIN = [(241, 194, 160), (224, 172, 125), (198, 134, 86), (141, 85, 54), (92, 58, 38)]
_HAIR = {"dark": (40, 28, 20), "blond": (220, 190, 100), "red": (170, 70, 30), "grey": (170, 170, 170)}
# Written words avoid nouns of the other categories so captions stay unambiguous.
_WORDS = (
    "STOP", "OPEN", "EXIT", "HELLO", "SALE", "NEWS", "MUSIC", "LOVE", "JAZZ", "FRESH",
    "NORTH", "DANGER", "WELCOME", "QUIET", "RELAX", "DREAM", "LUCKY", "HAPPY", "PEACE", "TICKETS",
)  # fmt: skip
_CATEGORY_WEIGHTS = {"face": 0.2, "body": 0.18, "place": 0.12, "word": 0.16, "vehicle": 0.11, "food": 0.11, "animal": 0.12}


@dataclass
class _Object:
    category: str
    phrase: str  # noun phrase for the caption, e.g. "a red car"
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image
    fill: float  # fraction of the box the drawing covers (for its area)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1]) * self.fill


@dataclass
class _Scene:
    background: str  # kind, e.g. "field", "stripes"
    bg_adverbial: str  # "in a grassy field under a blue sky"
    bg_nominal: str  # "a grassy field under a blue sky"
    place_strength: float  # how much the background itself is a place (scene)
    objects: list[_Object] = field(default_factory=list)
    patches: list[str] = field(default_factory=list)  # caption clauses for texture patches
    caption: str = ""


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xx + 0.5) / size, (yy + 0.5) / size


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _mix(c1: Sequence[int], c2: Sequence[int], t: np.ndarray) -> np.ndarray:
    """Return colours interpolated from ``c1`` (t = 0) to ``c2`` (t = 1), shape t.shape + (3,)."""
    t = np.asarray(t, np.float32)
    out = np.empty(t.shape + (3,), np.float32)
    # One channel at a time: numpy broadcasting over a trailing axis of 3 is ~10x slower.
    for c in range(3):
        out[..., c] = np.float32(c1[c]) + t * np.float32(c2[c] - c1[c])
    return out


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _two_colours(rng: np.random.Generator) -> tuple[str, str]:
    names = list(_COLOURS)
    a = int(rng.integers(len(names)))
    b = (a + 1 + int(rng.integers(len(names) - 1))) % len(names)
    return names[a], names[b]


def _position_phrase(cx: float, cy: float) -> str:
    h = "left" if cx < 0.38 else "right" if cx > 0.62 else ""
    v = "upper" if cy < 0.38 else "lower" if cy > 0.62 else ""
    if h and v:
        return f"in the {v} {h}"
    if h:
        return f"on the {h}"
    if v:
        return "at the top" if v == "upper" else "at the bottom"
    return "in the middle"


def _to_image(arr: np.ndarray, size: int) -> Image.Image:
    """Return the float RGB array ``arr`` as a ``size`` x ``size`` image.

    Smooth backgrounds are computed at half the drawing resolution and upsampled: the
    per-pixel numpy work is the slowest part of drawing a scene.
    """
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    # Nearest-neighbour 2x upsampling is exact after the final 2x2 box downsampling.
    return img if img.size == (size, size) else img.resize((size, size), Image.NEAREST)


def _texture(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, dict[str, str]]:
    """Return a ``size`` x ``size`` texture image, its kind and caption phrases for it.

    Phrases: ``"on"`` follows "on"/"against" for a background ("a red and blue
    checkerboard"), ``"name"`` is a short noun phrase ("a checkerboard") and ``"disc"``
    names a round patch of the texture ("a red and blue checkered disc").
    """
    half = size // 2
    xx, yy = _grid(half)
    kind = _pick(rng, ["stripes", "checker", "noise", "gradient", "plain"])
    c1, c2 = _two_colours(rng)
    if kind == "stripes":
        theta = _pick(rng, [0.0, 90.0, 45.0, 135.0])
        orient = {0.0: "vertical", 90.0: "horizontal", 45.0: "diagonal", 135.0: "diagonal"}[theta]
        freq = float(rng.uniform(3, 16))
        t = math.radians(theta)
        phase = float(rng.uniform(0, 2 * np.pi))
        wave = 0.5 + 0.5 * np.sin(
            np.float32(2 * np.pi * freq * math.cos(t)) * xx + np.float32(2 * np.pi * freq * math.sin(t)) * yy + np.float32(phase)
        )
        width = "thin" if freq > 9 else "wide"
        stripes = f"{width} {orient} {c1} and {c2} stripes"
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], wave), size), kind, {"on": stripes, "name": f"{orient} stripes", "disc": f"a disc of {stripes}"}
    if kind == "checker":
        k = float(rng.integers(3, 12))
        t = ((np.floor(xx * k) + np.floor(yy * k)) % 2).astype(np.float32)
        phrases = {"on": f"a {c1} and {c2} checkerboard", "name": "a checkerboard", "disc": f"a {c1} and {c2} checkered disc"}
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], t), size), kind, phrases
    if kind == "noise":
        k = int(rng.integers(6, 28))
        small = rng.random((k, k)).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((half, half), Image.BILINEAR), np.float32) / 255.0
        phrases = {"on": f"a speckled {c1} and {c2} texture", "name": "a speckled texture", "disc": f"a speckled {c1} and {c2} disc"}
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], t), size), kind, phrases
    if kind == "gradient":
        t = np.clip(xx if rng.random() < 0.5 else yy, 0, 1)
        phrases = {"on": f"a background fading from {c1} to {c2}", "name": f"a {c1}-to-{c2} gradient", "disc": f"a disc shading from {c1} to {c2}"}
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], t), size), kind, phrases
    phrases = {"on": f"a plain {c1} background", "name": f"a plain {c1} background", "disc": f"a plain {c1} disc"}
    return Image.new("RGB", (size, size), _COLOURS[c1]), kind, phrases


def _draw_background(rng: np.random.Generator, size: int) -> tuple[Image.Image, _Scene]:
    xx, yy = _grid(size // 2)
    kind = _pick(rng, ["field", "mountains", "beach", "room", "texture", "texture", "texture", "texture"])
    if kind == "texture":
        img, tex_kind, phrases = _texture(rng, size)
        prep = "against" if tex_kind == "stripes" else "on"
        return img, _Scene(tex_kind, f"{prep} {phrases['on']}", phrases["name"], 0.0)
    if kind == "room":
        wall_name = _pick(rng, ["white", "yellow", "pink", "teal", "grey", "blue"])
        wall = np.asarray(_COLOURS[wall_name], np.float32) * 0.85 + 30
        floor_y = float(rng.uniform(0.62, 0.8))
        arr = _mix((150, 100, 60), (100, 65, 35), yy)
        arr[yy < floor_y] = wall
        img = _to_image(arr, size)
        d = ImageDraw.Draw(img)
        wx, wy = rng.uniform(0.1, 0.6), rng.uniform(0.08, 0.25)
        ww, wh = rng.uniform(0.2, 0.32), rng.uniform(0.2, 0.3)
        box = [int(wx * size), int(wy * size), int((wx + ww) * size), int((wy + wh) * size)]
        d.rectangle(box, fill=(170, 210, 245), outline=(250, 250, 250), width=max(2, size // 60))
        d.line([(box[0] + box[2]) // 2, box[1], (box[0] + box[2]) // 2, box[3]], fill=(250, 250, 250), width=max(2, size // 80))
        return img, _Scene("room", f"in a room with {wall_name} walls and a window", f"a room with {wall_name} walls", 0.6)
    sky_kind = _pick(rng, ["blue", "cloudy", "sunset"])
    sky_top, sky_bottom = {
        "blue": ((40, 100, 220), (150, 200, 250)),
        "cloudy": ((140, 150, 165), (210, 215, 220)),
        "sunset": ((70, 60, 140), (250, 150, 70)),
    }[sky_kind]
    horizon = float(rng.uniform(0.5, 0.72))
    sky = _mix(sky_top, sky_bottom, np.clip(yy / horizon, 0, 1))
    ground_col = {"field": ((70, 150, 50), (40, 110, 30)), "mountains": ((90, 140, 60), (60, 100, 40)), "beach": ((235, 215, 160), (210, 185, 130))}[kind]
    grain = rng.normal(0.0, 0.12, yy.shape).astype(np.float32)  # grass / sand texture
    arr = _mix(*ground_col, np.clip((yy - horizon) / (1 - horizon), 0, 1) + grain)
    arr[yy < horizon] = sky[yy < horizon]
    if kind == "beach":
        sea_end = horizon + (1 - horizon) * float(rng.uniform(0.3, 0.5))
        sea = _mix((30, 90, 160), (60, 140, 190), np.clip((yy - horizon) / (sea_end - horizon), 0, 1))
        in_sea = (yy >= horizon) & (yy < sea_end)
        arr[in_sea] = sea[in_sea]
    img = _to_image(arr, size)
    d = ImageDraw.Draw(img)
    if kind == "mountains":
        for _ in range(int(rng.integers(2, 5))):
            cx, w, h = rng.uniform(0, 1), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.35)
            shade = int(rng.integers(90, 150))
            pts = [((cx - w) * size, horizon * size), (cx * size, (horizon - h) * size), ((cx + w) * size, horizon * size)]
            d.polygon(pts, fill=(shade, shade - 10, shade - 20))
            snow = [(cx - w * 0.2) * size, (horizon - h * 0.8) * size]
            d.polygon([tuple(snow), (cx * size, (horizon - h) * size), ((cx + w * 0.2) * size, snow[1])], fill=(240, 240, 245))
    sun = sky_kind == "sunset" or rng.random() < 0.3
    if sun:
        r = rng.uniform(0.04, 0.08) * size
        sx, sy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.08, 0.6) * horizon * size
        d.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 230, 120))
    sky_word = {"blue": "a blue sky", "cloudy": "a cloudy sky", "sunset": "a sunset sky"}[sky_kind]
    if sun:
        sky_word += " with the sun"
    adv, nom = {
        "field": (f"in a grassy field under {sky_word}", f"a grassy field under {sky_word}"),
        "mountains": (f"in front of mountains under {sky_word}", f"a mountain landscape under {sky_word}"),
        "beach": (f"on a beach by the sea under {sky_word}", "a sandy beach by the sea"),
    }[kind]
    return img, _Scene(kind, adv, nom, {"field": 0.7, "mountains": 0.8, "beach": 0.7}[kind])


def _draw_face(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    skin = _pick(rng, _SKIN)
    hair = _pick(rng, [None, *_HAIR])
    if hair:
        d.ellipse([x0 + 0.05 * w, y0, x1 - 0.05 * w, y0 + 0.7 * h], fill=_HAIR[hair])
    d.ellipse([x0 + 0.1 * w, y0 + 0.08 * h, x1 - 0.1 * w, y1], fill=skin, outline=(60, 40, 30), width=max(1, int(w / 60)))
    for ex in (0.35, 0.65):
        cx, cy, r = x0 + ex * w, y0 + 0.45 * h, 0.075 * w
        d.ellipse([cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r], fill=(250, 250, 250))
        d.ellipse([cx - 0.45 * r, cy - 0.45 * r, cx + 0.45 * r, cy + 0.45 * r], fill=(30, 30, 60))
        d.line([cx - r, cy - 1.4 * r, cx + r, cy - 1.6 * r], fill=(50, 35, 25), width=max(1, int(w / 40)))
    glasses = rng.random() < 0.2
    if glasses:
        for ex in (0.35, 0.65):
            cx, cy, r = x0 + ex * w, y0 + 0.45 * h, 0.12 * w
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(20, 20, 20), width=max(1, int(w / 45)))
    d.line([x0 + 0.5 * w, y0 + 0.5 * h, x0 + 0.46 * w, y0 + 0.64 * h, x0 + 0.52 * w, y0 + 0.65 * h], fill=(120, 70, 50), width=max(1, int(w / 60)))
    mood = _pick(rng, ["smiling", "smiling", "frowning", "surprised", "calm"])
    mouth = [x0 + 0.33 * w, y0 + 0.68 * h, x1 - 0.33 * w, y0 + 0.84 * h]
    lw = max(1, int(w / 30))
    if mood == "smiling":
        d.arc(mouth, 10, 170, fill=(150, 30, 40), width=lw)
    elif mood == "frowning":
        d.arc([mouth[0], mouth[1] + 0.08 * h, mouth[2], mouth[3] + 0.08 * h], 190, 350, fill=(150, 30, 40), width=lw)
    elif mood == "surprised":
        d.ellipse([x0 + 0.44 * w, y0 + 0.72 * h, x1 - 0.44 * w, y0 + 0.86 * h], fill=(110, 20, 30))
    else:
        d.line([mouth[0], y0 + 0.78 * h, mouth[2], y0 + 0.78 * h], fill=(150, 30, 40), width=lw)
    extras = []
    if hair:
        extras.append(f"{hair} hair")
    if glasses:
        extras.append("glasses")
    tail = f" with {' and '.join(extras)}" if extras else ""
    return f"a {mood} face{tail}"


def _draw_person(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    shirt = _pick(rng, ["red", "blue", "green", "yellow", "orange", "purple", "white", "black"])
    pants = _pick(rng, [(40, 50, 90), (30, 30, 30), (110, 90, 60)])
    skin = _pick(rng, _SKIN)
    lw = max(2, int(h / 14))
    r = 0.09 * h
    pose = _pick(rng, ["standing", "waving", "walking"])
    shoulder, hip = y0 + 0.25 * h, y0 + 0.58 * h
    # legs
    spread = 0.22 if pose == "walking" else 0.1
    for s in (-1, 1):
        d.line([cx + s * 0.06 * w, hip, cx + s * spread * w, y1], fill=pants, width=lw)
    # arms
    d.line([cx - 0.13 * w, shoulder, cx - 0.32 * w, y0 + 0.52 * h], fill=skin, width=max(1, lw // 2 + 1))
    if pose == "waving":
        d.line([cx + 0.13 * w, shoulder, cx + 0.34 * w, y0 + 0.02 * h], fill=skin, width=max(1, lw // 2 + 1))
    else:
        d.line([cx + 0.13 * w, shoulder, cx + 0.32 * w, y0 + 0.52 * h], fill=skin, width=max(1, lw // 2 + 1))
    d.rectangle([cx - 0.16 * w, shoulder - 0.03 * h, cx + 0.16 * w, hip], fill=_COLOURS[shirt])
    d.ellipse([cx - r, y0 + 0.02 * h, cx + r, y0 + 0.02 * h + 2 * r], fill=skin)
    if pose == "standing":
        return f"a person in a {shirt} shirt"
    return f"a person in a {shirt} shirt {pose}"


def _draw_place(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    if rng.random() < 0.55:
        wall = _pick(rng, ["red", "yellow", "white", "blue", "pink", "brown"])
        roof_y = y0 + 0.4 * h
        d.polygon([(x0, roof_y), ((x0 + x1) / 2, y0), (x1, roof_y)], fill=_pick(rng, [(120, 40, 30), (70, 70, 80), (90, 60, 40)]))
        d.rectangle([x0 + 0.08 * w, roof_y, x1 - 0.08 * w, y1], fill=_COLOURS[wall])
        d.rectangle([x0 + 0.42 * w, y0 + 0.68 * h, x0 + 0.58 * w, y1], fill=(80, 50, 30))
        for wx in (0.2, 0.66):
            d.rectangle([x0 + wx * w, y0 + 0.5 * h, x0 + (wx + 0.14) * w, y0 + 0.64 * h], fill=(170, 210, 245), outline=(255, 255, 255))
        return f"a {wall} house"
    col = _pick(rng, ["grey", "blue", "brown", "white", "teal"])
    bw = 0.55 * w
    bx0 = x0 + (w - bw) / 2
    d.rectangle([bx0, y0, bx0 + bw, y1], fill=_COLOURS[col], outline=(40, 40, 40))
    nx, ny = 3, max(3, int(6 * h / max(w, 1e-6) / 1.5))
    for i in range(nx):
        for j in range(ny):
            wx = bx0 + bw * (0.12 + 0.3 * i)
            wy = y0 + h * (0.06 + 0.88 * j / ny)
            d.rectangle([wx, wy, wx + 0.16 * bw, wy + 0.5 * h / ny], fill=(250, 235, 150) if rng.random() < 0.4 else (60, 80, 110))
    return f"a tall {col} building"


def _draw_word(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    word = _pick(rng, _WORDS)
    sign = rng.random() < 0.5
    text_col_name, plate_name = _two_colours(rng)
    if sign:
        d.rectangle([x0, y0, x1, y1], fill=_COLOURS[plate_name], outline=(30, 30, 30), width=max(1, int((y1 - y0) / 15)))
    box_w, box_h = (x1 - x0) * 0.9, (y1 - y0) * 0.8
    px = max(6, int(box_h))
    font = _font(px)
    left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    if right - left > box_w:  # shrink to fit the box
        px = max(6, int(px * box_w / (right - left)))
        font = _font(px)
        left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    tx = (x0 + x1) / 2 - (left + right) / 2
    ty = (y0 + y1) / 2 - (top + bottom) / 2
    d.text((tx, ty), word, fill=_COLOURS[text_col_name], font=font)
    if sign:
        return f"a {plate_name} sign with the word '{word}'"
    return f"the word '{word}' in {text_col_name} letters"


def _draw_vehicle(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    col = _pick(rng, ["red", "blue", "yellow", "green", "white", "black", "orange"])
    kind = _pick(rng, ["car", "car", "bus", "boat"])
    if kind == "boat":
        d.polygon([(x0, y0 + 0.65 * h), (x1, y0 + 0.65 * h), (x1 - 0.15 * w, y1), (x0 + 0.15 * w, y1)], fill=_COLOURS[col])
        d.line([x0 + 0.5 * w, y0, x0 + 0.5 * w, y0 + 0.65 * h], fill=(60, 40, 20), width=max(1, int(w / 40)))
        d.polygon([(x0 + 0.52 * w, y0 + 0.05 * h), (x0 + 0.52 * w, y0 + 0.6 * h), (x0 + 0.9 * w, y0 + 0.6 * h)], fill=(245, 245, 240))
        return f"a {col} sailboat"
    body_top = y0 + (0.45 if kind == "car" else 0.1) * h
    wheel_r = 0.14 * h if kind == "car" else 0.11 * h
    if kind == "car":
        d.polygon([(x0 + 0.2 * w, body_top), (x0 + 0.32 * w, y0 + 0.1 * h), (x0 + 0.7 * w, y0 + 0.1 * h), (x0 + 0.82 * w, body_top)], fill=_COLOURS[col])
        d.polygon([(x0 + 0.27 * w, body_top), (x0 + 0.35 * w, y0 + 0.18 * h), (x0 + 0.67 * w, y0 + 0.18 * h), (x0 + 0.75 * w, body_top)], fill=(170, 210, 240))
    d.rectangle([x0, body_top, x1, y1 - wheel_r], fill=_COLOURS[col], outline=(30, 30, 30))
    if kind == "bus":
        for i in range(5):
            wx = x0 + w * (0.05 + 0.19 * i)
            d.rectangle([wx, y0 + 0.2 * h, wx + 0.13 * w, y0 + 0.45 * h], fill=(170, 210, 240))
    for fx in (0.2, 0.8):
        cx, cy = x0 + fx * w, y1 - wheel_r
        d.ellipse([cx - wheel_r, cy - wheel_r, cx + wheel_r, cy + wheel_r], fill=(20, 20, 20))
        d.ellipse([cx - wheel_r / 2, cy - wheel_r / 2, cx + wheel_r / 2, cy + wheel_r / 2], fill=(160, 160, 160))
    return f"a {col} {kind}"


def _draw_food(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    # No orange: the fruit's name would be ambiguous with the colour in captions.
    kind = _pick(rng, ["apple", "lemon", "pizza", "cake", "banana"])
    if kind == "apple":
        col = _pick(rng, ["red", "green"])
        d.ellipse([x0, y0 + 0.15 * h, x1, y1], fill=_COLOURS[col])
        d.line([x0 + 0.5 * w, y0 + 0.2 * h, x0 + 0.55 * w, y0], fill=(90, 60, 30), width=max(1, int(w / 20)))
        d.ellipse([x0 + 0.55 * w, y0, x0 + 0.8 * w, y0 + 0.14 * h], fill=(50, 140, 50))
        return f"a {col} apple"
    if kind == "lemon":
        d.ellipse([x0, y0 + 0.15 * h, x1, y1 - 0.15 * h], fill=(250, 225, 60), outline=(200, 170, 30))
        d.ellipse([x0 + 0.25 * w, y0 + 0.3 * h, x0 + 0.4 * w, y0 + 0.4 * h], fill=(255, 245, 160))
        return "a lemon"
    if kind == "pizza":
        d.polygon([(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)], fill=(240, 200, 80))
        d.rectangle([x0, y0, x1, y0 + 0.12 * h], fill=(190, 120, 50))
        for _ in range(4):
            px, py = x0 + rng.uniform(0.3, 0.7) * w, y0 + rng.uniform(0.2, 0.5) * h
            r = 0.07 * w
            d.ellipse([px - r, py - r, px + r, py + r], fill=(190, 40, 30))
        return "a slice of pizza"
    if kind == "cake":
        col = _pick(rng, ["pink", "white", "brown", "yellow"])
        d.rectangle([x0, y0 + 0.35 * h, x1, y1], fill=_COLOURS[col], outline=(90, 60, 40))
        d.rectangle([x0, y0 + 0.6 * h, x1, y0 + 0.68 * h], fill=(250, 250, 250))
        d.rectangle([x0 + 0.47 * w, y0 + 0.1 * h, x0 + 0.53 * w, y0 + 0.35 * h], fill=(80, 120, 220))
        d.ellipse([x0 + 0.45 * w, y0, x0 + 0.55 * w, y0 + 0.12 * h], fill=(255, 200, 40))
        return f"a {col} cake with a candle"
    d.chord([x0, y0 - 0.6 * h, x1, y1], 20, 160, fill=_COLOURS["yellow"], outline=(120, 90, 20))
    return "a banana"


def _draw_animal(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    kind = _pick(rng, ["cat", "dog", "bird", "fish"])
    if kind == "fish":
        col = _pick(rng, ["orange", "blue", "yellow", "pink"])
        d.polygon([(x1 - 0.3 * w, y0 + 0.5 * h), (x1, y0 + 0.15 * h), (x1, y0 + 0.85 * h)], fill=_COLOURS[col])
        d.ellipse([x0, y0 + 0.2 * h, x1 - 0.2 * w, y1 - 0.2 * h], fill=_COLOURS[col], outline=(40, 40, 40))
        d.ellipse([x0 + 0.15 * w, y0 + 0.38 * h, x0 + 0.23 * w, y0 + 0.48 * h], fill=(20, 20, 20))
        return f"a {col} fish"
    if kind == "bird":
        col = _pick(rng, ["red", "blue", "yellow", "black"])
        d.ellipse([x0 + 0.15 * w, y0 + 0.3 * h, x1 - 0.1 * w, y1 - 0.15 * h], fill=_COLOURS[col])
        d.ellipse([x0, y0 + 0.15 * h, x0 + 0.4 * w, y0 + 0.5 * h], fill=_COLOURS[col])
        d.polygon([(x0, y0 + 0.3 * h), (x0 - 0.12 * w, y0 + 0.35 * h), (x0, y0 + 0.4 * h)], fill=(240, 160, 30))
        d.ellipse([x0 + 0.12 * w, y0 + 0.24 * h, x0 + 0.2 * w, y0 + 0.32 * h], fill=(250, 250, 250))
        d.chord([x0 + 0.35 * w, y0 + 0.35 * h, x1 - 0.2 * w, y1 - 0.25 * h], 0, 180, fill=tuple(int(c * 0.7) for c in _COLOURS[col]))
        return f"a {col} bird"
    col = _pick(rng, ["black", "orange", "grey", "white", "brown"])
    fill = _COLOURS[col]
    dark = tuple(int(c * 0.6) for c in fill)
    lw = max(2, int(w / 16))
    for fx in (0.3, 0.45, 0.7, 0.85):
        d.line([x0 + fx * w, y0 + 0.6 * h, x0 + fx * w, y1], fill=dark, width=lw)
    d.ellipse([x0 + 0.2 * w, y0 + 0.35 * h, x1, y0 + 0.8 * h], fill=fill, outline=dark)
    d.line([x1 - 0.05 * w, y0 + 0.5 * h, x1, y0 + 0.1 * h], fill=dark, width=lw)  # tail
    hx0, hy0, hx1, hy1 = x0, y0 + 0.1 * h, x0 + 0.4 * w, y0 + 0.55 * h
    if kind == "cat":
        for ex in (0.05, 0.25):
            d.polygon([(x0 + ex * w, hy0 + 0.1 * h), (x0 + (ex + 0.05) * w, y0), (x0 + (ex + 0.12) * w, hy0 + 0.1 * h)], fill=fill, outline=dark)
    d.ellipse([hx0, hy0, hx1, hy1], fill=fill, outline=dark)
    if kind == "dog":
        for ex in (0.0, 0.32):
            d.ellipse([x0 + ex * w, hy0, x0 + (ex + 0.1) * w, hy0 + 0.35 * h], fill=dark)
    for ex in (0.12, 0.26):
        d.ellipse([x0 + ex * w, hy0 + 0.15 * h, x0 + (ex + 0.05) * w, hy0 + 0.2 * h], fill=(30, 160, 60) if kind == "cat" else (20, 20, 20))
    return f"a {col} {kind}"


# category -> (drawer, (min, max) box width, aspect h/w range, fraction of box covered)
_DRAWERS = {
    "face": (_draw_face, (0.22, 0.42), (1.1, 1.3), 0.7),
    "body": (_draw_person, (0.16, 0.3), (2.0, 2.6), 0.35),
    "place": (_draw_place, (0.25, 0.45), (0.9, 1.8), 0.7),
    "word": (_draw_word, (0.35, 0.75), (0.25, 0.4), 0.5),
    "vehicle": (_draw_vehicle, (0.3, 0.55), (0.45, 0.7), 0.6),
    "food": (_draw_food, (0.15, 0.3), (0.9, 1.1), 0.65),
    "animal": (_draw_animal, (0.22, 0.4), (0.7, 0.9), 0.5),
}


def _compose_caption(scene: _Scene, rng: np.random.Generator) -> str:
    """Return a caption that names every object (with its position), the background and patches."""
    objs = scene.objects
    # A repeated description ("a red car" twice) becomes "another red car" the second time.
    phrases: list[str] = []
    for o in objs:
        phrases.append(re.sub(r"^an? ", "another ", o.phrase) if o.phrase in [p.phrase for p in objs[: len(phrases)]] else o.phrase)
    located = [f"{p} {_position_phrase(*o.centre)}" for p, o in zip(phrases, objs)]

    def join(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    template = int(rng.integers(5)) if len(objs) >= 2 else int(rng.integers(1, 5))
    if template == 0:
        a, b = objs[0], objs[1]
        (ax, ay), (bx, by) = a.centre, b.centre
        if abs(ax - bx) >= abs(ay - by):
            rel = "to the left of" if ax < bx else "to the right of"
        else:
            rel = "above" if ay < by else "below"
        if abs(ax - bx) < 0.15 and abs(ay - by) < 0.15:
            rel = "next to"
        text = f"{phrases[0]} {rel} {phrases[1]}"
        if len(objs) > 2:
            text += ", with " + join(located[2:]) + ","
        text += f" {scene.bg_adverbial}"
    elif template == 1:
        text = f"a picture of {join(located)} {scene.bg_adverbial}"
    elif template == 2:
        text = f"{scene.bg_nominal}, with {join(located)}"
    elif template == 3:
        text = f"there is {join(located)} {scene.bg_adverbial}"
    else:
        first, rest = located[0], located[1:]
        text = f"{first} {scene.bg_adverbial}"
        if rest:
            text += "; also visible: " + join(rest)
    if scene.patches:
        text += ", and " + join(scene.patches)
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a orange car" -> "an orange car"
    return text[0].upper() + text[1:] + "."


def _render_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, _Scene]:
    """Draw one scene at ``size`` px and return it with its record (objects and caption)."""
    big = 2 * size  # draw at twice the size, then downsample: anti-aliased edges
    img, scene = _draw_background(rng, big)
    # Texture patches put local contrast at random places in the visual field.
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        patch, _, phrases = _texture(rng, big)
        cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.22)
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).ellipse([(cx - r) * big, (cy - r) * big, (cx + r) * big, (cy + r) * big], fill=255)
        img.paste(patch, (0, 0), mask)
        scene.patches.append(f"{phrases['disc']} {_position_phrase(cx, cy)}")
    d = ImageDraw.Draw(img)
    cats = list(_CATEGORY_WEIGHTS)
    p = np.array([_CATEGORY_WEIGHTS[c] for c in cats])
    n_obj = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.36, 0.24, 0.1]))
    boxes: list[np.ndarray] = []
    for _ in range(n_obj):
        cat = cats[int(rng.choice(len(cats), p=p / p.sum()))]
        drawer, (wmin, wmax), (amin, amax), fill = _DRAWERS[cat]
        for _attempt in range(12):
            w = rng.uniform(wmin, wmax)
            h = min(w * rng.uniform(amin, amax), 0.9)
            x0, y0 = rng.uniform(0.02, 0.98 - w), rng.uniform(0.02, 0.98 - h)
            box = np.array([x0, y0, x0 + w, y0 + h])
            # Keep objects mostly unoccluded so the caption describes what is visible.
            ok = all(
                max(0.0, min(box[2], o[2]) - max(box[0], o[0])) * max(0.0, min(box[3], o[3]) - max(box[1], o[1]))
                < 0.2 * min(w * h, (o[2] - o[0]) * (o[3] - o[1]))
                for o in boxes
            )
            if ok:
                break
        else:
            continue
        boxes.append(box)
        phrase = drawer(d, box * big, rng)
        scene.objects.append(_Object(cat, phrase, tuple(float(b) for b in box), fill))
    if not scene.objects:  # every scene shows at least one object
        box = np.array([0.3, 0.3, 0.7, 0.7])
        scene.objects.append(_Object("food", _draw_food(d, box * big, rng), tuple(box), 0.65))
    scene.caption = _compose_caption(scene, rng)
    return img.reduce(2), scene  # 2x2 box average: anti-aliasing at a fraction of LANCZOS cost
