"""Image features the ground-truth responses are computed from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ._constants import _GRID, _VISUAL_FIELD_DEG, CATEGORIES
from .scenes import _Scene

# ---------------------------------------------------------------------------------------
# Image features the ground-truth responses are computed from
# ---------------------------------------------------------------------------------------

_MAX_OBJECTS = 4


@dataclass
class _ImageFeatures:
    """Stimulus descriptors of n distinct images, in the order of ``nsd_ids``."""

    contrast: np.ndarray  # (n, G*G) local contrast energy per grid cell
    luminance: np.ndarray  # (n, G*G)
    saturation: np.ndarray  # (n, G*G)
    obj_category: np.ndarray  # (n, 4) int category index, -1 = no object
    obj_strength: np.ndarray  # (n, 4) sqrt of area fraction
    obj_x: np.ndarray  # (n, 4) deg
    obj_y: np.ndarray  # (n, 4) deg
    scene_place: np.ndarray  # (n,) how much the background is a place
    global_props: np.ndarray  # (n, 6) image-wide properties
    latent: np.ndarray  # (n, 4) idiosyncratic per-image factors (memory, attention, ...)


def _pixel_features(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (contrast, luminance, saturation) pooled on a _GRID x _GRID grid, each (G*G,)."""
    if img.size != (4 * _GRID, 4 * _GRID):
        img = img.resize((4 * _GRID, 4 * _GRID), Image.BILINEAR)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lum = np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b
    gx = np.zeros_like(lum)
    gy = np.zeros_like(lum)
    gx[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2
    gy[1:-1] = (lum[2:] - lum[:-2]) / 2
    energy = gx**2 + gy**2
    sat = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)

    def pool(a: np.ndarray) -> np.ndarray:
        return a.reshape(_GRID, 4, _GRID, 4).mean(axis=(1, 3)).ravel()

    return pool(energy), pool(lum), pool(sat)


def _scene_features(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cat = np.full(_MAX_OBJECTS, -1, dtype=np.int64)
    strength = np.zeros(_MAX_OBJECTS)
    x = np.zeros(_MAX_OBJECTS)
    y = np.zeros(_MAX_OBJECTS)
    for k, o in enumerate(scene.objects[:_MAX_OBJECTS]):
        cx, cy = o.centre
        cat[k] = CATEGORIES.index(o.category)
        strength[k] = math.sqrt(o.area)
        x[k] = (cx - 0.5) * _VISUAL_FIELD_DEG
        y[k] = (0.5 - cy) * _VISUAL_FIELD_DEG
    return cat, strength, x, y
