"""Figures of results: surface maps on fsaverage (nilearn), ROI comparisons, scatter, sweeps.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it
works headless (no display, no backend switch, nothing global changed: a Jupyter session
keeps its inline backend) and never accumulates open figures; ``out=`` writes a PNG of
exactly ``figsize * dpi`` pixels (atomically).

Surface maps
------------
A result's vertices are challenge-space vertices; ``fsaverage_index`` and ``hemisphere``
place each on the fsaverage mesh named by ``attrs["fsaverage_mesh"]`` (``fsaverage`` for
the Algonauts data, ``fsaverage5`` for the demo). Mesh vertices outside the challenge
space are NaN and show the sulcal background. Colour maps: sequential for scores
(``inferno``, from 0 when the values are non-negative), diverging and symmetric around 0
for differences (``RdBu_r``). ROI outlines come from the ``roi_<class>`` coordinates.

nilearn ships fsaverage5 (offline); the full fsaverage mesh is downloaded on first use
into nilearn's data folder. Where it cannot be fetched,
:class:`FsaverageUnavailableError` says how to provide it.

Interactive HTML (:func:`surface_html`) uses nilearn's plotly engine and needs the
``plotly`` package, which neuroenc does not depend on.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import xarray as xr

from neuroenc.analysis import (MODEL_DIM, across_subjects, default_variable, per_vertex_variables,
                               dataset_roi_order, roi_order, roi_table, select_model)
from neuroenc.cache import atomic_path
from neuroenc.data.subject import FSAVERAGE_MESHES, HEMISPHERES
from neuroenc.results import roi_coords

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "VIEWS",
    "SEQUENTIAL_CMAP",
    "DIVERGING_CMAP",
    "FsaverageUnavailableError",
    "SurfaceMesh",
    "load_fsaverage_mesh",
    "surface_maps",
    "plot_surface",
    "plot_map",
    "has_surface_coords",
    "plot_difference_map",
    "plot_roi_comparison",
    "plot_model_scatter",
    "plot_sweep",
    "read_sweeps",
    "surface_html",
    "save_figure",
    "quantize_png",
]

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


class FsaverageUnavailableError(RuntimeError):
    """The fsaverage mesh a result lives on is not available and could not be fetched."""


# --------------------------------------------------------------------------- meshes


@dataclass(frozen=True)
class SurfaceMesh:
    """One fsaverage mesh: per hemisphere coordinates, faces and sulcal depth.

    Attributes
    ----------
    name : str
        ``fsaverage5``, ``fsaverage`` ...
    surface : str
        ``inflated``, ``pial``, ``white`` or ``sphere``.
    coordinates : dict of str to ndarray of shape (n_mesh_vertices, 3)
    faces : dict of str to ndarray of int of shape (n_faces, 3)
    sulcal_depth : dict of str to ndarray of shape (n_mesh_vertices,)
        The grey background of the maps.
    """

    name: str
    surface: str
    coordinates: dict
    faces: dict
    sulcal_depth: dict

    @property
    def n_vertices(self) -> int:
        """Vertices per hemisphere."""
        return len(self.coordinates["lh"])


def _fsaverage_help(mesh: str, data_dir: str | Path | None, exc: BaseException) -> str:
    from nilearn.datasets import get_data_dirs

    where = get_data_dirs(str(data_dir) if data_dir is not None else None)[0]
    return (
        f"the {mesh} mesh ({_MESH_SIZES.get(mesh, '?'):,} vertices per hemisphere) is not in "
        f"nilearn's data folder ({where}) and could not be downloaded "
        f"({type(exc).__name__}: {str(exc)[:200]}). Only fsaverage5 ships with nilearn. "
        f"To provide {mesh}: on a machine with internet run\n"
        f"    python -c \"from nilearn import datasets; datasets.fetch_surf_fsaverage('{mesh}')\"\n"
        f"and copy the folder it fills (~/nilearn_data/{mesh}, or $NILEARN_DATA/{mesh}) to "
        f"{Path(where) / mesh} here; or point the NILEARN_DATA environment variable (or "
        f"data_dir=) at a folder that holds {mesh}/.")


@functools.lru_cache(maxsize=8)
def _load_mesh_cached(mesh: str, surface: str, data_dir: str | None) -> SurfaceMesh:
    from nilearn import datasets, surface as nsurface

    if mesh not in _MESH_SIZES:
        raise ValueError(f"unknown mesh {mesh!r}; known: {', '.join(_MESH_SIZES)}")
    if surface not in _SURFACES:
        raise ValueError(f"unknown surface {surface!r}; known: {', '.join(_SURFACES)}")
    try:
        files = datasets.fetch_surf_fsaverage(mesh, data_dir=data_dir)
        coords, faces, sulc = {}, {}, {}
        for hemi in HEMISPHERES:
            side = _NILEARN_HEMI[hemi]
            loaded = nsurface.load_surf_mesh(files[f"{_SURFACES[surface]}_{side}"])
            coords[hemi] = np.asarray(loaded.coordinates)
            faces[hemi] = np.asarray(loaded.faces)
            sulc[hemi] = np.asarray(nsurface.load_surf_data(files[f"sulc_{side}"]))
    except Exception as exc:  # network, partial download, missing file: one clear message
        raise FsaverageUnavailableError(_fsaverage_help(mesh, data_dir, exc)) from exc
    if len(coords["lh"]) != _MESH_SIZES[mesh]:
        raise FsaverageUnavailableError(
            f"nilearn's {mesh} has {len(coords['lh'])} vertices per hemisphere, expected "
            f"{_MESH_SIZES[mesh]}; the files in its data folder may be damaged")
    return SurfaceMesh(mesh, surface, coords, faces, sulc)


def load_fsaverage_mesh(mesh: str = "fsaverage5", surface: str = "inflated",
                        data_dir: str | Path | None = None) -> SurfaceMesh:
    """Return an fsaverage mesh (cached in memory after the first call).

    Parameters
    ----------
    mesh : str
        ``fsaverage5`` (ships with nilearn, offline) or ``fsaverage`` (the Algonauts
        mesh; downloaded on first use), or ``fsaverage3/4/6``.
    surface : {"inflated", "pial", "white", "sphere"}
    data_dir : path, optional
        nilearn's data folder; default ``$NILEARN_DATA`` or ``~/nilearn_data``.

    Raises
    ------
    FsaverageUnavailableError
        The mesh is neither on disk nor downloadable; the message says how to provide it.
    """
    return _load_mesh_cached(mesh, surface, None if data_dir is None else str(data_dir))


# --------------------------------------------------------------------------- values


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
        from neuroenc.plugins import suggest

        found = per_vertex_variables(one)
        raise KeyError(f"model {one.attrs.get('model')!r} ({one.attrs.get('subject')}): no "
                       f"variable {variable!r}; found: {', '.join(found)}{suggest(variable, found)}")
    array = one[variable]
    array.name = variable
    return array, dict(one.attrs)


def _mesh_name(values: xr.DataArray, attrs: Mapping, mesh: str | None) -> str:
    if mesh is not None:
        return mesh
    if attrs.get("fsaverage_mesh"):
        return str(attrs["fsaverage_mesh"])
    largest = int(values["fsaverage_index"].max())
    return next(name for n, name in sorted(FSAVERAGE_MESHES.items()) if n > largest)


def surface_maps(data: xr.Dataset | xr.DataArray, variable: str | None = None, *,
                 model: str | None = None, mesh: str | None = None) -> dict[str, np.ndarray]:
    """Return a variable projected onto its fsaverage mesh, NaN outside the challenge space.

    Parameters
    ----------
    data : Dataset (one result, or stacked by :func:`neuroenc.analysis.load_results`) or
        DataArray of shape (n_vertices,) with ``hemisphere`` and ``fsaverage_index``
        coordinates (e.g. from :func:`neuroenc.analysis.model_difference`)
    variable, model : str, optional
    mesh : str, optional
        Default: ``attrs["fsaverage_mesh"]``, else the smallest mesh that holds every
        ``fsaverage_index``.

    Returns
    -------
    maps : dict of str to ndarray of shape (n_mesh_vertices,)
        ``{"lh": ..., "rh": ...}``, float64.
    """
    values, attrs = _as_dataarray(data, variable, model)
    name = _mesh_name(values, attrs, mesh)
    n_mesh = _MESH_SIZES[name]
    hemisphere = values["hemisphere"].values.astype(str)
    index = values["fsaverage_index"].values
    if index.max(initial=0) >= n_mesh:
        raise ValueError(f"fsaverage_index reaches {index.max()}, but {name} has {n_mesh} "
                         "vertices per hemisphere; wrong mesh?")
    out = {}
    for hemi in HEMISPHERES:
        full = np.full(n_mesh, np.nan)
        sel = hemisphere == hemi
        full[index[sel]] = values.values[sel]
        out[hemi] = full
    return out


def _roi_label_maps(data: xr.Dataset | xr.DataArray, roi_classes: Sequence[str],
                    mesh_size: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Return per hemisphere an int label per mesh vertex (0 outside) and the ROI names."""
    coords = {cls: name for name, cls in roi_coords(data if isinstance(data, xr.Dataset)
                                                     else data.to_dataset(name="_v")).items()}
    names: list[str] = []
    labels = {h: np.zeros(mesh_size, dtype=int) for h in HEMISPHERES}
    hemisphere = data["hemisphere"].values.astype(str)
    index = data["fsaverage_index"].values
    for cls in roi_classes:
        if cls not in coords:
            raise KeyError(f"no ROI class {cls!r} in the result; found: {', '.join(coords)}")
        roi = data[coords[cls]].values.astype(str)
        for name in roi_order((n for n in roi if n not in ("", "Unknown")), data):
            names.append(name)
            sel = roi == name
            for hemi in HEMISPHERES:
                hs = sel & (hemisphere == hemi)
                labels[hemi][index[hs]] = len(names)
    return labels, names


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


# --------------------------------------------------------------------------- surfaces


def plot_surface(data: xr.Dataset | xr.DataArray, variable: str | None = None, *,
                 model: str | None = None,
                 views: Sequence[str] = VIEWS,
                 hemispheres: Sequence[str] = HEMISPHERES,
                 diverging: bool = False,
                 cmap: str | None = None,
                 vmin: float | None = None,
                 vmax: float | None = None,
                 threshold: float | None = None,
                 rois: str | Sequence[str] | None = None,
                 title: str | None = None,
                 colorbar_label: str | None = None,
                 mesh: str | None = None,
                 surface: str = "inflated",
                 data_dir: str | Path | None = None,
                 panel_size: tuple[float, float] = (2.2, 1.8),
                 dpi: float = 100,
                 out: str | Path | None = None) -> Figure:
    """Return a figure of a per-vertex variable on the fsaverage surface, both hemispheres.

    Parameters
    ----------
    data : Dataset or DataArray
        One result (``scores.nc``), a stacked Dataset with ``model`` (then name the
        model), or a DataArray of shape (n_vertices,) with the vertex coordinates.
    variable : str, optional
        Any per-vertex variable: ``noise_normalized`` (default), ``pearson``, ``r2``,
        ``noise_ceiling``, or a recipe's extra map (``vp_unique_image`` ...).
    model : str, optional
    views : sequence of {"lateral", "medial", "ventral", "posterior", "dorsal", "anterior"}
        One column per view.
    hemispheres : sequence of {"lh", "rh"}
        One row per hemisphere.
    diverging : bool
        A diverging colour map symmetric around 0 (for differences) instead of a
        sequential one (for scores).
    cmap : str, optional
        Matplotlib colour map; default ``inferno`` / ``RdBu_r``.
    vmin, vmax : float, optional
        Colour limits; default 0 (non-negative data) or the 1st percentile, and the 99th
        percentile (diverging: +-99th percentile of |value|).
    threshold : float, optional
        Vertices with |value| below it are not coloured (nilearn's threshold).
    rois : str or sequence of str, optional
        ROI classes whose ROIs are outlined, e.g. ``"floc-faces"``.
    title, colorbar_label : str, optional
    mesh : str, optional
        Override the mesh (default ``attrs["fsaverage_mesh"]``).
    surface : {"inflated", "pial", "white", "sphere"}
    data_dir : path, optional
        nilearn's data folder (for the full fsaverage).
    panel_size : (float, float)
        Inches per view panel; the figure is ``len(views) * w + 0.9`` by
        ``len(hemispheres) * h + 0.5`` inches (plus 0.35 for ROI legends).
    dpi : float
    out : path, optional
        Write the figure there (PNG: ``figsize * dpi`` pixels).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    FsaverageUnavailableError
        The full fsaverage mesh is needed and cannot be fetched.
    KeyError
        Unknown model, variable or ROI class (the message lists the known ones).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch
    from nilearn import plotting as nplot

    values, attrs = _as_dataarray(data, variable, model)
    variable = variable or str(values.name)
    mesh_name = _mesh_name(values, attrs, mesh)
    surf = load_fsaverage_mesh(mesh_name, surface, data_dir)
    maps = surface_maps(values, mesh=mesh_name)
    low, high = _color_limits({h: maps[h] for h in hemispheres}, diverging, vmin, vmax)
    cmap = cmap or (DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP)
    bad = [v for v in views if v not in ("lateral", "medial", "ventral", "posterior", "dorsal",
                                         "anterior")]
    if bad or not views:
        raise ValueError(f"views {bad or views}: expected some of lateral, medial, ventral, "
                         "posterior, dorsal, anterior")
    if not set(hemispheres) <= set(HEMISPHERES) or not hemispheres:
        raise ValueError(f"hemispheres {list(hemispheres)}: expected some of lh, rh")
    roi_classes = [rois] if isinstance(rois, str) else list(rois or [])
    roi_labels, roi_names = ({}, [])
    if roi_classes:
        source = data if isinstance(data, xr.Dataset) else values
        roi_labels, roi_names = _roi_label_maps(source, roi_classes, surf.n_vertices)

    pw, ph = panel_size
    legend_h = 0.35 if roi_names else 0.0
    title_h, cbar_w = 0.5, 0.9
    width = len(views) * pw + cbar_w
    height = len(hemispheres) * ph + title_h + legend_h
    fig = _new_figure((width, height), dpi)
    roi_colors = [_OUTLINE_COLORS[i % len(_OUTLINE_COLORS)] for i in range(len(roi_names))]
    for row, hemi in enumerate(hemispheres):
        for col, view in enumerate(views):
            rect = [col * pw / width, 1 - (title_h + (row + 1) * ph) / height,
                    pw / width, ph / height]
            ax = fig.add_axes(rect, projection="3d")
            with warnings.catch_warnings():  # a hemisphere without values is legitimate
                warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
                nplot.plot_surf_stat_map(
                    (surf.coordinates[hemi], surf.faces[hemi]), maps[hemi],
                    hemi=_NILEARN_HEMI[hemi], view=view, bg_map=surf.sulcal_depth[hemi], axes=ax,
                    figure=fig, colorbar=False, cmap=cmap, vmin=low, vmax=high,
                    threshold=threshold, engine="matplotlib", symmetric_cbar=diverging)
            for level, color in enumerate(roi_colors, start=1):
                if not (roi_labels[hemi] == level).any():
                    continue
                try:
                    nplot.plot_surf_contours((surf.coordinates[hemi], surf.faces[hemi]),
                                             roi_labels[hemi], levels=[level], colors=[color],
                                             axes=ax, figure=fig)
                except ValueError:  # a ROI of isolated vertices has no outline to draw
                    pass
            ax.set_box_aspect(None, zoom=1.35)  # nilearn leaves wide margins around the mesh
            if col == 0:
                fig.text(0.005, rect[1] + rect[3] / 2, _HEMI_WORDS[hemi], rotation=90,
                         va="center", ha="left", fontsize=9)
            if row == 0:
                fig.text(rect[0] + rect[2] / 2, rect[1] + rect[3], view, ha="center",
                         va="bottom", fontsize=9)
    cax = fig.add_axes([1 - 0.75 / width, 1 - (title_h + len(hemispheres) * ph * 0.85) / height,
                        0.12 / width, len(hemispheres) * ph * 0.7 / height])
    fig.colorbar(ScalarMappable(Normalize(low, high), colormaps[cmap]), cax=cax,
                 label=colorbar_label if colorbar_label is not None else _label(variable))
    cax.yaxis.label.set_size(8)
    cax.tick_params(labelsize=7)
    if roi_names:
        fig.legend(handles=[Patch(facecolor=c, edgecolor="0.4", label=n)
                            for n, c in zip(roi_names, roi_colors)],
                   loc="lower center", ncol=min(len(roi_names), 8), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    if title is None:
        parts = [attrs.get("model"), attrs.get("subject"), variable]
        title = " | ".join(str(p) for p in parts if p)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    return _finish(fig, out, dpi)


def has_surface_coords(data: xr.Dataset | xr.DataArray) -> bool:
    """Return whether a result's units are fsaverage vertices (surface maps apply)."""
    return {"hemisphere", "fsaverage_index"} <= set(map(str, data.coords))


def plot_map(data: xr.Dataset | xr.DataArray, variable: str | None = None, *,
             model: str | None = None, views: Sequence[str] = VIEWS, rois=None,
             diverging: bool = False, cmap: str | None = None, vmin: float | None = None,
             vmax: float | None = None, threshold: float | None = None,
             title: str | None = None, data_dir: str | Path | None = None, dpi: float = 100,
             out: str | Path | None = None, **surface_kwargs) -> Figure:
    """Return a map of a per-unit variable: on the surface for surface data
    (:func:`plot_surface`, which also gets ``surface_kwargs``), in the volume for voxel
    data (:func:`neuroenc.volume.plot_volume`).

    Raises
    ------
    ValueError
        The result has neither surface nor volume coordinates.
    """
    from neuroenc.volume import has_volume_coords, plot_volume

    values, attrs = _as_dataarray(data, variable, model)
    common = dict(diverging=diverging, cmap=cmap, vmin=vmin, vmax=vmax, threshold=threshold,
                  title=title, dpi=dpi, out=out)
    if has_surface_coords(values):
        return plot_surface(values if isinstance(data, xr.DataArray) else data, variable,
                            model=model, views=views, rois=rois, data_dir=data_dir, **common,
                            **surface_kwargs)
    if has_volume_coords(values, attrs):
        if isinstance(data, xr.DataArray):
            values.attrs.update(attrs)
        return plot_volume(data, variable, model=model, **common)
    raise ValueError(f"{attrs.get('model', 'result')}: its units have neither surface "
                     "coordinates (hemisphere, fsaverage_index) nor volume coordinates "
                     "(voxel_i/j/k with volume_shape and affine, or mni_x/y/z); only ROI "
                     "tables and plots apply")


def plot_difference_map(data: Mapping[str, xr.Dataset] | xr.Dataset, model_a: str, model_b: str,
                        variable: str | None = None, *, subject: str | None = None,
                        **kwargs) -> Figure:
    """Return a map of ``model_a`` minus ``model_b`` (diverging, symmetric around 0).

    Parameters
    ----------
    data : dict of subject to stacked Dataset (:func:`neuroenc.analysis.load_results`)
        or one subject's stacked Dataset
    model_a, model_b : str
    variable : str, optional
    subject : str, optional
        Which subject (default: the first).
    **kwargs
        Passed to :func:`plot_map` (``views``, ``rois``, ``threshold``, ``out`` ...).
    """
    ds = _subject_dataset(data, subject)
    variable = variable or default_variable(ds)
    a = select_model(ds, model_a)
    b = select_model(ds, model_b)
    diff = a[variable] - b[variable]
    diff.attrs = {k: ds.attrs[k] for k in ("fsaverage_mesh", "space", "volume_shape", "affine",
                                           "subject") if k in ds.attrs}
    kwargs.setdefault("title", f"{model_a} - {model_b} | {ds.attrs.get('subject', '')} | {variable}")
    if has_surface_coords(diff):
        kwargs.setdefault("colorbar_label", f"difference in {_label(variable)}")
    return plot_map(diff.rename(variable), variable, diverging=True, **kwargs)


def _subject_dataset(data: Mapping[str, xr.Dataset] | xr.Dataset, subject: str | None) -> xr.Dataset:
    if isinstance(data, xr.Dataset):
        return data
    if subject is None:
        return data[next(iter(data))]
    if subject not in data:
        raise KeyError(f"no subject {subject!r}; found: {', '.join(data)}")
    return data[subject]


def surface_html(data: xr.Dataset | xr.DataArray, out: str | Path, variable: str | None = None, *,
                 model: str | None = None, hemisphere: str = "lh", diverging: bool = False,
                 cmap: str | None = None, vmin: float | None = None, vmax: float | None = None,
                 threshold: float | None = None, mesh: str | None = None,
                 surface: str = "inflated", data_dir: str | Path | None = None) -> Path:
    """Write an interactive HTML surface view of one hemisphere (nilearn ``view_surf``).

    Needs the optional ``plotly`` package (``pip install plotly``); neuroenc does not
    depend on it.

    Raises
    ------
    ImportError
        plotly is not installed (the message says how to install it).
    """
    try:
        import plotly  # noqa: F401
    except ImportError as exc:
        raise ImportError("interactive HTML surface views use nilearn's plotly engine; "
                          "install it with `pip install plotly` (PNG plots need only "
                          "matplotlib)") from exc
    from nilearn import plotting as nplot

    if hemisphere not in HEMISPHERES:
        raise ValueError(f"hemisphere {hemisphere!r}: expected lh or rh")
    values, attrs = _as_dataarray(data, variable, model)
    mesh_name = _mesh_name(values, attrs, mesh)
    surf = load_fsaverage_mesh(mesh_name, surface, data_dir)
    maps = surface_maps(values, mesh=mesh_name)
    low, high = _color_limits({hemisphere: maps[hemisphere]}, diverging, vmin, vmax)
    view = nplot.view_surf(
        (surf.coordinates[hemisphere], surf.faces[hemisphere]), maps[hemisphere],
        bg_map=surf.sulcal_depth[hemisphere], threshold=threshold,
        cmap=cmap or (DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP),
        symmetric_cmap=diverging, vmin=None if diverging else low, vmax=high,
        title=" | ".join(str(p) for p in (attrs.get("model"), attrs.get("subject"),
                                          variable or values.name, _HEMI_WORDS[hemisphere]) if p),
        view="left" if hemisphere == "lh" else "right")
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(view.get_standalone(), encoding="utf-8")
    return out


# --------------------------------------------------------------------------- ROI plots


def _stacked(results) -> dict[str, xr.Dataset]:
    if isinstance(results, xr.Dataset):
        return {results.attrs.get("subject", "subject"): results}
    return dict(results)


def plot_roi_comparison(results: Mapping[str, xr.Dataset] | xr.Dataset,
                        variable: str | None = None, *,
                        roi_class: str | None = None,
                        kind: Literal["bar", "box"] = "bar",
                        models: Sequence[str] | None = None,
                        n_boot: int = 1000, seed: int = 0,
                        table: pd.DataFrame | None = None,
                        figsize: tuple[float, float] | None = None, dpi: float = 100,
                        title: str | None = None,
                        out: str | Path | None = None) -> Figure:
    """Return a bar or box plot comparing models per ROI (or per ROI class).

    Parameters
    ----------
    results : dict of subject to stacked Dataset, or one stacked Dataset
    variable : str, optional
    roi_class : str, optional
        Compare the ROIs of this class (``floc-faces`` ...); None: one group per ROI
        class (all its ROIs pooled) plus "all" vertices.
    kind : {"bar", "box"}
        ``bar``: the median over vertices per subject, averaged over subjects; error bars
        are the across-subject sem with several subjects, else the bootstrap 95% CI of
        the median over vertices. ``box``: the distribution over vertices (all subjects
        pooled), whiskers at the 5th and 95th percentiles.
    models : sequence of str, optional
        Which models, in order (default: all).
    n_boot, seed : int
        Bootstrap for the one-subject error bars.
    table : DataFrame, optional
        A :func:`neuroenc.analysis.roi_table` of these results at the matching level
        (``roi`` with ``roi_class``, else ``roi_class``), to reuse its numbers and CIs
        instead of computing them again (bar plots only).
    figsize : (float, float), optional
        Default grows with the number of groups.
    dpi : float
    title : str, optional
    out : path, optional
    """
    results = _stacked(results)
    first = next(iter(results.values()))
    variable = variable or default_variable(results)
    names = list(models) if models is not None else [str(m) for m in first[MODEL_DIM].values]
    level = "roi" if roi_class is not None else "roi_class"
    if kind not in ("bar", "box"):
        raise ValueError(f"kind must be 'bar' or 'box', found {kind!r}")

    if roi_class is not None:
        classes = list(roi_coords(first).values())
        if roi_class not in classes:
            raise KeyError(f"no ROI class {roi_class!r}; found: {', '.join(classes)}")

    if kind == "bar":
        single = len(results) == 1
        if table is None:
            table = roi_table({s: ds.sel({MODEL_DIM: names}) for s, ds in results.items()},
                              variable, level=level, n_boot=n_boot if single else 0, seed=seed)
        else:
            if ("roi" in table) != (level == "roi") or (single and "median_ci_low" not in table):
                raise ValueError(f"table: expected a roi_table at level {level!r}"
                                 + (" with bootstrap CIs" if single else ""))
            table = table[table.model.isin(names)]
        if roi_class is not None:
            table = table[table.roi_class == roi_class]
            groups = roi_order(table.roi, table)
            key = "roi"
        else:
            groups = list(dict.fromkeys(table.roi_class))
            key = "roi_class"
        spread = across_subjects(table)
    else:
        groups, samples = _box_samples(results, names, variable, roi_class)
    n_groups = len(groups)
    if figsize is None:
        figsize = (min(14.0, max(5.0, 1.6 + n_groups * (0.35 + 0.22 * len(names)))), 3.6)
    fig = _new_figure(figsize, dpi)
    # title, then the legend rows, then the axes: nothing overlaps however many models
    ncol = max(1, min(len(names), int(figsize[0] // 2.2)))
    legend_rows = -(-len(names) // ncol)
    title_h, row_h = 0.3 / figsize[1], 0.17 / figsize[1]
    top = 1 - title_h - legend_rows * row_h - 0.02
    ax = fig.add_axes([0.09, 0.24, 0.89, top - 0.24])
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    width = 0.8 / len(names)
    x = np.arange(n_groups)
    for i, model in enumerate(names):
        pos = x - 0.4 + width * (i + 0.5)
        color = palette(i % 10)
        if kind == "bar":
            rows = spread[spread.model == model].set_index(key).reindex(groups)
            heights = rows["mean"].to_numpy(dtype=float)
            if single:
                per = table[table.model == model].set_index(key).reindex(groups)
                err = np.vstack([heights - per["median_ci_low"].to_numpy(float),
                                 per["median_ci_high"].to_numpy(float) - heights])
            else:
                err = rows["sem"].to_numpy(dtype=float)
            ax.bar(pos, heights, width * 0.92, yerr=err, color=color, label=model,
                   error_kw={"elinewidth": 0.8, "capsize": 1.5})
        else:
            data = [samples[model][g] for g in groups]
            keep = [j for j, d in enumerate(data) if len(d)]
            bp = ax.boxplot([data[j] for j in keep], positions=pos[keep], widths=width * 0.85,
                            whis=(5, 95), showfliers=False, patch_artist=True,
                            medianprops={"color": "black", "linewidth": 0.8})
            for patch in bp["boxes"]:
                patch.set_facecolor(color)
                patch.set_alpha(0.85)
            ax.plot([], [], color=color, linewidth=6, label=model)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=35, ha="right", fontsize=8)
    ax.set_xlim(-0.6, n_groups - 0.4)
    ax.set_ylabel(_label(variable), fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.axhline(0, color="0.6", linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, frameon=False, ncol=ncol,
               loc="upper left", bbox_to_anchor=(0.08, 1 - title_h), borderaxespad=0.0)
    if title is None:
        what = f"ROIs of {roi_class}" if roi_class else "ROI classes"
        stat = "median per subject" if kind == "bar" else "distribution over vertices"
        title = f"{variable}: {stat}, {what} ({len(results)} subject{'s' * (len(results) > 1)})"
    fig.suptitle(title, fontsize=9, x=0.01, ha="left", y=0.99)
    return _finish(fig, out, dpi)


def _box_samples(results: Mapping[str, xr.Dataset], names: Sequence[str], variable: str,
                 roi_class: str | None) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    samples: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in names}
    groups: list[str] = []
    for ds in results.values():
        coords = roi_coords(ds)
        for model in names:
            one = select_model(ds, model)
            if variable not in one:
                continue
            values = one[variable].values
            if roi_class is None:
                samples[model].setdefault("all", []).append(values)
                groups = groups or ["all"]
                for coord, cls in coords.items():
                    inside = ~np.isin(one[coord].values.astype(str), ("", "Unknown"))
                    if inside.any():
                        samples[model].setdefault(cls, []).append(values[inside])
                        if cls not in groups:
                            groups.append(cls)
            else:
                coord = next(c for c, cls in coords.items() if cls == roi_class)
                labels = one[coord].values.astype(str)
                for roi in roi_order((r for r in labels if r not in ("", "Unknown")), one):
                    samples[model].setdefault(roi, []).append(values[labels == roi])
                    if roi not in groups:
                        groups.append(roi)
    pooled = {m: {g: np.concatenate(v) for g, v in by.items()} for m, by in samples.items()}
    for m in pooled:
        for g in groups:
            pooled[m].setdefault(g, np.array([]))
    return groups, pooled


def plot_model_scatter(results: Mapping[str, xr.Dataset] | xr.Dataset, model_a: str, model_b: str,
                       variable: str | None = None, *, subject: str | None = None,
                       color_by: str | None = "streams",
                       figsize: tuple[float, float] = (4.2, 4.2), dpi: float = 100,
                       title: str | None = None, out: str | Path | None = None) -> Figure:
    """Return a vertex-by-vertex scatter of ``model_b`` (y) against ``model_a`` (x).

    Parameters
    ----------
    results : dict of subject to stacked Dataset, or one stacked Dataset
    model_a, model_b : str
    variable : str, optional
    subject : str, optional
        One subject; default all subjects pooled.
    color_by : str or None
        A ROI class whose ROIs are coloured (other vertices grey); None: one colour.
    figsize, dpi, title, out
        As elsewhere; the identity line is dashed and the corner says the fraction of
        vertices above it.
    """
    results = _stacked(results)
    if subject is not None:
        results = {subject: _subject_dataset(results, subject)}
    variable = variable or default_variable(results)
    xs, ys, groups = [], [], []
    for ds in results.values():
        a, b = select_model(ds, model_a), select_model(ds, model_b)
        for name, one in ((model_a, a), (model_b, b)):
            if variable not in one:
                raise KeyError(f"model {name!r} has no variable {variable!r}")
        xs.append(a[variable].values)
        ys.append(b[variable].values)
        if color_by is not None:
            coord = {cls: c for c, cls in roi_coords(ds).items()}.get(color_by)
            if coord is None:
                raise KeyError(f"no ROI class {color_by!r}; found: "
                               f"{', '.join(roi_coords(ds).values())}")
            groups.append(ds[coord].values.astype(str))
    x, y = np.concatenate(xs), np.concatenate(ys)
    fig = _new_figure(figsize, dpi)
    ax = fig.add_axes([0.16, 0.14, 0.8, 0.74])
    size = max(2.0, min(8.0, 6000 / max(len(x), 1)))
    if color_by is None:
        ax.scatter(x, y, s=size, alpha=0.5, color="C0", linewidths=0, rasterized=True)
    else:
        labels = np.concatenate(groups)
        outside = np.isin(labels, ("", "Unknown"))
        if outside.any():
            ax.scatter(x[outside], y[outside], s=size, alpha=0.35, color="0.65", linewidths=0,
                       label="other", rasterized=True)
        from matplotlib import colormaps

        palette = colormaps["tab10"]
        known = [n for ds in results.values() for n in dataset_roi_order(ds)]
        for i, roi in enumerate(roi_order((r for r in set(labels) if r not in ("", "Unknown")), known)):
            sel = labels == roi
            ax.scatter(x[sel], y[sel], s=size, alpha=0.6, color=palette(i % 10), linewidths=0,
                       label=roi, rasterized=True)
        ax.legend(fontsize=6, frameon=False, markerscale=2.5, loc="upper left", ncol=2)
    finite = np.isfinite(x) & np.isfinite(y)
    lo = float(min(x[finite].min(), y[finite].min())) if finite.any() else 0.0
    hi = float(max(x[finite].max(), y[finite].max())) if finite.any() else 1.0
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    above = float(np.mean(y[finite] > x[finite])) if finite.any() else float("nan")
    ax.text(0.98, 0.02, f"{model_b} > {model_a}:\n{above:.0%} of {int(finite.sum())} vertices",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    ax.set_xlabel(f"{model_a}", fontsize=8)
    ax.set_ylabel(f"{model_b}", fontsize=8)
    ax.tick_params(labelsize=7)
    if title is None:
        who = subject or f"{len(results)} subject{'s' * (len(results) > 1)}"
        title = f"{variable} per vertex ({who})"
    fig.suptitle(title, fontsize=9)
    return _finish(fig, out, dpi)


# --------------------------------------------------------------------------- sweeps


def read_sweeps(run_dir: str | Path) -> dict[str, dict[str, xr.Dataset]]:
    """Return ``{base model: {subject: sweep Dataset}}`` from ``models/<base>/<subject>/sweep.nc``."""
    from neuroenc.results import read_netcdf

    out: dict[str, dict[str, xr.Dataset]] = {}
    for path in sorted(Path(run_dir).glob("models/*/*/sweep.nc")):
        ds = read_netcdf(path)
        out.setdefault(path.parent.parent.name, {})[path.parent.name] = ds
    return out


def _sweep_dim(ds: xr.Dataset) -> str:
    dims = [d for d in ds.dims if d != "vertex"]
    if len(dims) != 1:
        raise ValueError(f"sweep Dataset has dims {list(ds.dims)}; expected one sweep dimension "
                         "and 'vertex'")
    return str(dims[0])


def plot_sweep(sweeps: Mapping[str, xr.Dataset] | str | Path, variable: str | None = None, *,
               model: str | None = None, figsize: tuple[float, float] = (5.0, 3.4),
               dpi: float = 100, title: str | None = None,
               out: str | Path | None = None) -> Figure:
    """Return the score against the swept parameter: one line per ROI class.

    Parameters
    ----------
    sweeps : dict of subject to sweep Dataset (``models/<base>/<subject>/sweep.nc``), or
        a run folder (then ``model`` names the swept model; default: the first)
    variable : str, optional
    model : str, optional
    figsize, dpi, title, out
        As elsewhere.

    Notes
    -----
    Each ROI class shows the median over its vertices, averaged over subjects; the thick
    black line is the challenge-style mean over all vertices. A positive numeric parameter
    spanning two decades or more gets a log axis; one that starts at 0 and spans a decade
    or more above it (0, 0.01, 0.1 ...) a symlog axis.
    """
    if isinstance(sweeps, (str, Path)):
        found = read_sweeps(sweeps)
        if not found:
            raise FileNotFoundError(f"{sweeps}: no sweep results (models/<model>/<subject>/sweep.nc)")
        model = model or next(iter(found))
        if model not in found:
            raise KeyError(f"no sweep of model {model!r}; found: {', '.join(found)}")
        sweeps = found[model]
    first = next(iter(sweeps.values()))
    dim = _sweep_dim(first)
    variable = variable or default_variable(first)
    model = model or first.attrs.get("model", "")
    labels = [_point_label(first, dim, i) for i in range(first.sizes[dim])]
    raw = first[dim].values
    numeric = np.issubdtype(raw.dtype, np.number) and dim != "sweep_point"
    xs = raw.astype(float) if numeric else np.arange(len(raw))
    series: dict[str, list[np.ndarray]] = {}
    for ds in sweeps.values():
        values = ds[variable].transpose(dim, "vertex").values
        series.setdefault("all (mean)", []).append(np.nanmean(values, axis=1))
        for coord, cls in roi_coords(ds).items():
            inside = ~np.isin(ds[coord].values.astype(str), ("", "Unknown"))
            if inside.any() and cls != "streams":
                series.setdefault(cls, []).append(np.nanmedian(values[:, inside], axis=1))
    fig = _new_figure(figsize, dpi)
    ax = fig.add_axes([0.13, 0.17, 0.56, 0.7])
    for i, (name, per_subject) in enumerate(series.items()):
        mean = np.mean(per_subject, axis=0)
        if name == "all (mean)":
            ax.plot(xs, mean, "k-o", linewidth=2, markersize=4, label="all vertices (mean)",
                    zorder=3)
        else:
            ax.plot(xs, mean, "-o", linewidth=1, markersize=3, label=name, color=f"C{i % 10}")
    if numeric:
        positive = xs[xs > 0]
        span = positive.max() / positive.min() if positive.size >= 2 else 1.0
        if (xs == 0).any() and (xs >= 0).all() and span >= 10:
            # a grid like 0, 0.01, 0.03, 0.1 (a loss weight): 0 and the small values apart
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        elif (xs > 0).all() and span >= 100:
            ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([_short(v) for v in raw], fontsize=7)
    else:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    params = json.loads(first.attrs.get("sweep_parameters", "[]") or "[]")
    ax.set_xlabel(", ".join(params) or dim, fontsize=8)
    ax.set_ylabel(_label(variable), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5),
              title="ROI class (median)", title_fontsize=7)
    fig.suptitle(title or f"sweep of {model} ({len(sweeps)} subject{'s' * (len(sweeps) > 1)})",
                 fontsize=9)
    return _finish(fig, out, dpi)


def _short(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _point_label(ds: xr.Dataset, dim: str, i: int) -> str:
    if dim != "sweep_point":
        return _short(ds[dim].values[i])
    params = [c for c in ds.coords if ds[c].dims == (dim,)]
    return ", ".join(f"{c}={_short(ds[c].values[i])}" for c in params)

