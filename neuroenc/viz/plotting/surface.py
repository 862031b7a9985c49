"""Surface maps on fsaverage (nilearn), difference maps, and the surface-or-volume dispatch."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from neuroenc.core.cache import atomic_path
from neuroenc.data.subject import FSAVERAGE_MESHES, HEMISPHERES
from neuroenc.evaluation.analysis import default_variable, roi_order, select_model
from neuroenc.evaluation.results import roi_coords

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ._common import (
    _HEMI_WORDS,
    _MESH_SIZES,
    _NILEARN_HEMI,
    _OUTLINE_COLORS,
    _SURFACES,
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    VIEWS,
    _as_dataarray,
    _color_limits,
    _finish,
    _label,
    _new_figure,
    _subject_dataset,
)


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
    from nilearn import datasets
    from nilearn import surface as nsurface

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
    data : Dataset (one result, or stacked by :func:`neuroenc.evaluation.analysis.load_results`) or
        DataArray of shape (n_vertices,) with ``hemisphere`` and ``fsaverage_index``
        coordinates (e.g. from :func:`neuroenc.evaluation.analysis.model_difference`)
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
    data (:func:`neuroenc.viz.volume.plot_volume`).

    Raises
    ------
    ValueError
        The result has neither surface nor volume coordinates.
    """
    from neuroenc.viz.volume import has_volume_coords, plot_volume

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
    data : dict of subject to stacked Dataset (:func:`neuroenc.evaluation.analysis.load_results`)
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


