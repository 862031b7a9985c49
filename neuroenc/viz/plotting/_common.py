"""Shared pieces of the plots: constants, figure creation and saving, colour limits."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from neuroenc.core.cache import atomic_path
from neuroenc.data.subject import FSAVERAGE_MESHES
from neuroenc.evaluation.analysis import (
    MODEL_DIM,
    default_variable,
    per_vertex_variables,
    select_model,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


VIEWS = ("lateral", "medial", "ventral", "posterior")
SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
_NILEARN_HEMI = {"lh": "left", "rh": "right"}
_HEMI_WORDS = {"lh": "left", "rh": "right"}
_MESH_SIZES = {name: n for n, name in FSAVERAGE_MESHES.items()}
_SURFACES = {"inflated": "infl", "pial": "pial", "white": "white", "sphere": "sphere"}
# ROI outline colours chosen to stand out on both inferno and RdBu_r maps and on grey.
_OUTLINE_COLORS = ("#00e5ff", "#00c853", "#ff00ff", "#2962ff", "#000000", "#aeea00", "#ff6d00",
                   "#8d6e63")




def _as_dataarray(data: xr.Dataset | xr.DataArray, variable: str | None,
                  model: str | None) -> tuple[xr.DataArray, dict]:
    """Return one model's per-vertex values and the attributes to plot them with."""
    if isinstance(data, xr.DataArray):
        if MODEL_DIM in data.dims:
            if model is None:
                raise KeyError(f"{data.name}: several models, name one of: "
                               f"{', '.join(map(str, data[MODEL_DIM].values))}")
            data = data.sel({MODEL_DIM: model})
        return data, dict(data.attrs)
    one = select_model(data, model)
    variable = variable or default_variable(one)
    if variable not in one:
        from neuroenc.core.plugins import suggest

        found = per_vertex_variables(one)
        raise KeyError(f"model {one.attrs.get('model')!r} ({one.attrs.get('subject')}): no "
                       f"variable {variable!r}; found: {', '.join(found)}{suggest(variable, found)}")
    array = one[variable]
    array.name = variable
    return array, dict(one.attrs)




# --------------------------------------------------------------------------- helpers


def _new_figure(figsize: tuple[float, float], dpi: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, facecolor="white")


def save_figure(fig: Figure, out: str | Path, *, dpi: float | None = None,
                palette: bool = False) -> Path:
    """Write ``fig`` as PNG (or the format of ``out``'s suffix) atomically; return the path.

    The image is ``fig.get_size_inches() * dpi`` pixels (no tight bounding box).
    ``palette=True`` stores a PNG with 256 colours (see :func:`quantize_png`).
    """
    import io

    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    with atomic_path(out) as tmp:
        if palette and fmt == "png":
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, facecolor=fig.get_facecolor())
            tmp.write_bytes(quantize_png(buffer.getvalue()))
        else:
            fig.savefig(tmp, format=fmt, dpi=dpi or fig.dpi, facecolor=fig.get_facecolor())
    return out


def quantize_png(data: bytes) -> bytes:
    """Return a PNG re-encoded with a 256-colour palette (or ``data`` if that is not smaller).

    Maps are a colour map over a grey background: 256 colours lose nothing visible and
    shrink a surface figure about threefold (reports, docs).
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def _finish(fig: Figure, out: str | Path | None, dpi: float) -> Figure:
    if out is not None:
        save_figure(fig, out, dpi=dpi)
    return fig


def _color_limits(maps: Mapping[str, np.ndarray], diverging: bool, vmin: float | None,
                  vmax: float | None) -> tuple[float, float]:
    finite = np.concatenate([m[np.isfinite(m)] for m in maps.values()])
    if finite.size == 0:
        return (vmin if vmin is not None else 0.0), (vmax if vmax is not None else 1.0)
    if diverging:
        # Symmetric around 0 so that white means "no difference"; the 99th percentile of
        # |value| keeps a few extreme vertices from washing out the map.
        bound = vmax if vmax is not None else (abs(vmin) if vmin is not None else
                                               float(np.percentile(np.abs(finite), 99)))
        bound = bound or 1.0
        return -bound, bound
    low = vmin if vmin is not None else (0.0 if np.percentile(finite, 1) >= 0 or
                                         np.median(finite) > 0 else float(np.percentile(finite, 1)))
    high = vmax if vmax is not None else float(np.percentile(finite, 99))
    if high <= low:
        high = low + 1.0
    return low, high


def _label(variable: str | None) -> str:
    labels = {"noise_normalized": "noise-normalized score (% of noise ceiling)",
              "pearson": "Pearson r", "r2": "R²", "noise_ceiling": "noise ceiling"}
    return labels.get(variable or "", variable or "")

def _subject_dataset(data: Mapping[str, xr.Dataset] | xr.Dataset, subject: str | None) -> xr.Dataset:
    if isinstance(data, xr.Dataset):
        return data
    if subject is None:
        return data[next(iter(data))]
    if subject not in data:
        raise KeyError(f"no subject {subject!r}; found: {', '.join(data)}")
    return data[subject]
