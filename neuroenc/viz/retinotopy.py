"""Retinotopic quantities of fitted receptive fields, and the maps people want to look at.

Models with receptive fields (the ``fwrf`` mapper) write per-vertex ``rf_x``, ``rf_y``
(field centre; x right, y up, origin at the image centre), ``rf_size`` (Gaussian sigma),
``rf_angle`` (polar angle) and ``rf_eccentricity`` into their results, in degrees of
visual angle where the dataset says how many degrees its images span, else in image
fractions (``attrs["vertex_map_units"]``).

* :func:`plot_retinotopic_map`: polar angle on the surface with a cyclic colour map and
  a colour-wheel legend (which colour is which direction in the visual field);
  eccentricity and pRF size with sequential colour maps.
* :func:`plot_visual_field_coverage`: per ROI, the fitted pRFs drawn in the visual field
  (centres as dots, one sigma as circles, their summed coverage as a grey density).

Polar angle is measured counter-clockwise from the right horizontal meridian: 0 = right,
90 = upper vertical meridian, +-180 = left, -90 = lower vertical meridian.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RF_VARIABLES",
    "ANGLE_CMAP",
    "polar_coordinates",
    "circular_correlation",
    "plot_retinotopic_map",
    "plot_visual_field_coverage",
    "has_receptive_fields",
]

#: Per-vertex variables of receptive-field models (not scores).
RF_VARIABLES = ("rf_x", "rf_y", "rf_size", "rf_angle", "rf_eccentricity", "rf_exponent",
                "alpha", "fwrf_cv_score")
#: Cyclic colour map for polar angle: -180 and +180 (the left horizontal meridian) meet.
ANGLE_CMAP = "hsv"
ECCENTRICITY_CMAP = "viridis"
SIZE_CMAP = "plasma"
_MAP_LABELS = {"rf_angle": "polar angle", "rf_eccentricity": "eccentricity",
               "rf_size": "pRF size (sigma)", "rf_x": "pRF centre x", "rf_y": "pRF centre y"}
# Vertices whose training-set CV score of the fwrf fit is below this are not drawn by
# default: their field is a guess.
DEFAULT_MIN_CV_SCORE = 0.05


def polar_coordinates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(polar angle in degrees, eccentricity)`` of visual-field positions.

    Angle counter-clockwise from the right horizontal meridian, in (-180, 180]
    (90 = upper vertical meridian); eccentricity in the units of ``x`` and ``y``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return np.degrees(np.arctan2(y, x)), np.hypot(x, y)


def circular_correlation(a: np.ndarray, b: np.ndarray, *, degrees: bool = True) -> float:
    """Return the circular correlation coefficient of two sets of angles.

    Jammalamadaka & SenGupta (2001), eq. 8.2.2 (``astropy.stats.circcorrcoef``):
    ``sum sin(a - mean a) sin(b - mean b) / sqrt(sum sin^2(a - mean a) sum sin^2(b - mean b))``
    with circular means. It assumes unimodal angles: compute it per hemisphere (one
    hemifield each), not over both hemifields at once.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if degrees:
        a, b = np.radians(a), np.radians(b)
    sa = np.sin(a - np.angle(np.exp(1j * a).mean()))
    sb = np.sin(b - np.angle(np.exp(1j * b).mean()))
    denom = np.sqrt((sa**2).sum() * (sb**2).sum())
    return float((sa * sb).sum() / denom) if denom > 0 else 0.0


def has_receptive_fields(ds: xr.Dataset) -> bool:
    """Return whether a result (one model) has fitted receptive fields."""
    return "rf_angle" in ds and bool(np.isfinite(ds["rf_angle"].values).any())


def _units(ds: xr.Dataset) -> dict[str, str]:
    raw = ds.attrs.get("vertex_map_units", "")
    try:
        return json.loads(raw) if isinstance(raw, str) and raw else dict(raw or {})
    except (TypeError, ValueError):
        return {}


def _reliable(ds: xr.Dataset, min_cv_score: float | None) -> np.ndarray:
    if min_cv_score is None or "fwrf_cv_score" not in ds:
        return np.ones(ds.sizes["vertex"], dtype=bool)
    return np.asarray(ds["fwrf_cv_score"].values > min_cv_score)


def plot_retinotopic_map(ds: xr.Dataset, variable: str = "rf_angle", *,
                         min_cv_score: float | None = DEFAULT_MIN_CV_SCORE,
                         views: Sequence[str] = ("medial", "ventral", "posterior"),
                         rois: str | Sequence[str] | None = "prf-visualrois",
                         vmin: float | None = None, vmax: float | None = None,
                         cmap: str | None = None, title: str | None = None,
                         data_dir: str | Path | None = None, dpi: float = 100,
                         out: str | Path | None = None) -> Figure:
    """Return a surface map of a receptive-field variable of one model's result.

    Parameters
    ----------
    ds : Dataset
        One model's result (``scores.nc``, or :func:`neuroenc.evaluation.analysis.select_model`).
    variable : {"rf_angle", "rf_eccentricity", "rf_size", "rf_x", "rf_y"}
        ``rf_angle`` gets the cyclic :data:`ANGLE_CMAP` over -180..180 and a colour wheel
        showing which colour is which visual-field direction; the others a sequential map.
    min_cv_score : float or None
        Vertices whose fwrf training CV score (``fwrf_cv_score``) is at most this are
        not coloured; None draws every vertex.
    views, rois, vmin, vmax, cmap, title, data_dir, dpi, out
        As :func:`neuroenc.viz.plotting.plot_surface` (ROI outlines default to the early
        visual areas).
    """
    from neuroenc.viz.plotting import plot_surface

    if variable not in ds:
        raise KeyError(f"model {ds.attrs.get('model')!r}: no variable {variable!r}; receptive-"
                       f"field maps need a model with receptive fields (e.g. the fwrf mapper)")
    values = ds[variable].where(xr.DataArray(_reliable(ds, min_cv_score), dims="vertex"))
    values.name = variable
    unit = _units(ds).get(variable, "")
    label = _MAP_LABELS.get(variable, variable) + (f" ({unit})" if unit else "")
    angle = variable == "rf_angle"
    if angle:
        cmap, vmin, vmax = cmap or ANGLE_CMAP, -180.0 if vmin is None else vmin, \
            180.0 if vmax is None else vmax
    elif variable in ("rf_x", "rf_y"):
        cmap = cmap or "RdBu_r"
    else:
        cmap = cmap or (ECCENTRICITY_CMAP if variable == "rf_eccentricity" else SIZE_CMAP)
        vmin = 0.0 if vmin is None else vmin
    if rois is not None:
        from neuroenc.evaluation.results import roi_coords

        wanted = [rois] if isinstance(rois, str) else list(rois)
        rois = [r for r in wanted if r in roi_coords(ds).values()] or None
    if title is None:
        title = " | ".join(str(p) for p in (ds.attrs.get("model"), ds.attrs.get("subject"),
                                             _MAP_LABELS.get(variable, variable)) if p)
    fig = plot_surface(values, variable, views=views, rois=rois, vmin=vmin, vmax=vmax,
                       cmap=cmap, title=title, colorbar_label=label, data_dir=data_dir,
                       dpi=dpi, diverging=variable in ("rf_x", "rf_y"))
    if angle:
        _colour_wheel(fig, cmap)
    if out is not None:
        from neuroenc.viz.plotting import save_figure

        save_figure(fig, out, dpi=dpi)
    return fig


def _colour_wheel(fig: Figure, cmap: str) -> None:
    """Replace the figure's colour bar (its last axes) with a polar-angle colour wheel."""
    from matplotlib import colormaps

    cbar = fig.axes[-1]
    x0, y0, w, h = cbar.get_position().bounds
    cbar.remove()
    fw, fh = fig.get_size_inches()
    side = min(0.8 / fw, 1.0 / fh)  # about 0.8 inch
    ax = fig.add_axes([1 - side - 0.02 / fw, y0 + h / 2 - side / 2, side, side * fw / fh],
                      projection="polar")
    theta = np.linspace(-np.pi, np.pi, 361)
    radius = np.array([0.45, 1.0])
    t, r = np.meshgrid(theta, radius)
    centres = np.degrees(theta[:-1] + np.diff(theta) / 2)[None, :]  # (1, 360)
    ax.pcolormesh(t, r, centres, cmap=colormaps[cmap], vmin=-180, vmax=180, shading="flat")
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks(np.radians([0, 90, 180, 270]))
    ax.set_xticklabels(["R", "U", "L", "D"], fontsize=6)
    ax.tick_params(pad=-1)
    ax.grid(False)
    ax.set_title("visual field", fontsize=6, pad=2)


def plot_visual_field_coverage(ds: xr.Dataset, *, roi_class: str = "prf-visualrois",
                               min_cv_score: float | None = DEFAULT_MIN_CV_SCORE,
                               extent: float | None = None, max_fields: int = 400,
                               dpi: float = 100, title: str | None = None,
                               out: str | Path | None = None) -> Figure:
    """Return a figure with, per ROI of ``roi_class``, its pRFs drawn in the visual field.

    Each panel shows the image (a square of side ``extent``, default the visual field of
    the results' units: 1 image side, or the degrees the image spans), the summed
    coverage of the ROI's Gaussian pRFs (grey, normalised to its maximum), and up to
    ``max_fields`` pRFs per hemisphere as a dot at the centre and a circle of radius
    sigma (left hemisphere orange, right hemisphere blue; each should cover the
    contralateral hemifield).

    Parameters
    ----------
    ds : Dataset
        One model's result with ``rf_x``, ``rf_y``, ``rf_size``.
    roi_class : str
    min_cv_score : float or None
        Only vertices whose ``fwrf_cv_score`` exceeds it.
    extent : float, optional
        Side of the square drawn (units of ``rf_x``).
    max_fields : int
        Circles drawn per hemisphere and ROI (the best-fitting ones); the coverage
        density uses every vertex.
    """
    from matplotlib.patches import Circle, Rectangle

    from neuroenc.viz.plotting._common import _finish, _new_figure
    from neuroenc.evaluation.results import roi_coords

    for name in ("rf_x", "rf_y", "rf_size"):
        if name not in ds:
            raise KeyError(f"model {ds.attrs.get('model')!r}: no variable {name!r}; coverage "
                           "plots need a model with receptive fields (e.g. the fwrf mapper)")
    coords = {cls: coord for coord, cls in roi_coords(ds).items()}
    if roi_class not in coords:
        raise KeyError(f"no ROI class {roi_class!r} in the result; found: {', '.join(coords)}")
    from neuroenc.evaluation.analysis import roi_order

    labels = ds[coords[roi_class]].values.astype(str)
    names = roi_order(n for n in dict.fromkeys(labels) if n not in ("", "Unknown"))
    units = _units(ds).get("rf_x", "")
    if extent is None:
        extent = 1.0 if units in ("", "image fraction") else _extent_from_attrs(ds)
    reliable = _reliable(ds, min_cv_score)
    x, y, s = (np.asarray(ds[v].values, dtype=np.float64) for v in ("rf_x", "rf_y", "rf_size"))
    hemisphere = ds["hemisphere"].values.astype(str)
    score = (np.asarray(ds["fwrf_cv_score"].values) if "fwrf_cv_score" in ds
             else np.zeros(len(x)))
    n_cols = min(4, max(1, len(names)))
    n_rows = max(1, -(-len(names) // n_cols))
    panel = 2.2
    fig = _new_figure((n_cols * panel, n_rows * panel + 0.5), dpi)
    half = extent / 2
    grid = np.linspace(-half * 1.25, half * 1.25, 121)
    gx, gy = np.meshgrid(grid, grid)
    colours = {"lh": "#e66101", "rh": "#3b75af"}
    for i, name in enumerate(names):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        sel = (labels == name) & reliable & np.isfinite(x)
        density = np.zeros_like(gx)
        for j in np.flatnonzero(sel):
            density += np.exp(-0.5 * ((gx - x[j]) ** 2 + (gy - y[j]) ** 2) / s[j] ** 2)
        if density.max() > 0:
            ax.imshow(density / density.max(), extent=(grid[0], grid[-1], grid[0], grid[-1]),
                      origin="lower", cmap="Greys", vmin=0, vmax=1.6, interpolation="bilinear")
        for hemi, colour in colours.items():
            idx = np.flatnonzero(sel & (hemisphere == hemi))
            idx = idx[np.argsort(-score[idx], kind="stable")[:max_fields]]
            for j in idx:
                ax.add_patch(Circle((x[j], y[j]), s[j], fill=False, lw=0.3, alpha=0.35,
                                    color=colour))
            ax.scatter(x[idx], y[idx], s=2, color=colour, linewidths=0,
                       label=f"{hemi} ({len(idx)})")
        ax.add_patch(Rectangle((-half, -half), extent, extent, fill=False, lw=0.8, color="k"))
        ax.axhline(0, color="0.6", lw=0.4)
        ax.axvline(0, color="0.6", lw=0.4)
        ax.set_xlim(grid[0], grid[-1])
        ax.set_ylim(grid[0], grid[-1])
        ax.set_aspect("equal")
        ax.set_title(f"{name} ({int(sel.sum())})", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="lower right", frameon=False, handletextpad=0.2)
    if title is None:
        title = " | ".join(str(p) for p in (ds.attrs.get("model"), ds.attrs.get("subject"),
                                             f"pRF coverage ({units or 'image fraction'})") if p)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=1 - 0.45 / (n_rows * panel + 0.5),
                        wspace=0.3, hspace=0.35)
    return _finish(fig, out, dpi)


def _extent_from_attrs(ds: xr.Dataset) -> float:
    """Return the image extent in degrees implied by the largest |rf_x|, |rf_y| grid value."""
    value = ds.attrs.get("visual_field_deg")
    if value:
        return float(value)
    # centres lie on the image (extent 1 image side by default): their range is the image
    x = np.abs(np.asarray(ds["rf_x"].values, dtype=np.float64))
    y = np.abs(np.asarray(ds["rf_y"].values, dtype=np.float64))
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    return float(2 * finite.max()) if finite.size else 1.0
