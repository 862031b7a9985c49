"""Volume data: per-voxel results as NIfTI images and nilearn volume plots.

A result whose units are voxels carries ``voxel_i`` / ``voxel_j`` / ``voxel_k`` (with
``volume_shape`` and ``affine`` attributes from the dataset) and/or ``mni_x`` /
``mni_y`` / ``mni_z`` (mm) coordinates (:mod:`neuroenc.data.subject`).
:func:`volume_image` puts a variable back into its volume: the dataset's own grid where
it is known, else the 2 mm MNI152 template grid that nilearn ships (offline).
:func:`plot_volume` draws it with ``nilearn.plotting.plot_stat_map`` over the MNI
template (MNI-space data) or on a blank background (native space);
:func:`volume_html` writes nilearn's interactive ``view_img`` page.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["VOXEL_COORDS", "MNI_COORDS", "has_volume_coords", "volume_image", "plot_volume",
           "volume_html"]

VOXEL_COORDS = ("voxel_i", "voxel_j", "voxel_k")
MNI_COORDS = ("mni_x", "mni_y", "mni_z")


def has_volume_coords(data: xr.Dataset | xr.DataArray, attrs: Mapping | None = None) -> bool:
    """Return whether a result's units can be placed in a volume."""
    coords = set(map(str, data.coords))
    attrs = data.attrs if attrs is None else attrs
    return set(MNI_COORDS) <= coords or (set(VOXEL_COORDS) <= coords
                                         and "volume_shape" in attrs and "affine" in attrs)


def _attr(attrs: Mapping, key: str):
    value = attrs.get(key)
    return json.loads(value) if isinstance(value, str) and value else value


def _is_mni(attrs: Mapping, coords) -> bool:
    return "mni" in str(attrs.get("space", "")).lower() or set(MNI_COORDS) <= set(map(str, coords))


def volume_image(values: xr.DataArray, attrs: Mapping | None = None):
    """Return a ``nibabel.Nifti1Image`` of per-voxel values (NaN where there is no voxel).

    Parameters
    ----------
    values : DataArray of shape (n_voxels,)
        With ``voxel_i/j/k`` coordinates (and ``volume_shape`` / ``affine`` in
        ``attrs``), or ``mni_x/y/z`` coordinates in mm.
    attrs : mapping, optional
        The result's attributes (default: ``values.attrs``).

    Raises
    ------
    ValueError
        The values have no volume coordinates.
    """
    import nibabel as nib

    attrs = dict(values.attrs if attrs is None else attrs)
    coords = set(map(str, values.coords))
    shape, affine = _attr(attrs, "volume_shape"), _attr(attrs, "affine")
    if set(VOXEL_COORDS) <= coords and shape is not None and affine is not None:
        ijk = np.stack([values[c].values.astype(np.int64) for c in VOXEL_COORDS], axis=1)
        shape, affine = tuple(int(v) for v in shape), np.asarray(affine, dtype=float)
    elif set(MNI_COORDS) <= coords:
        from nilearn import datasets

        template = datasets.load_mni152_template(resolution=2)
        shape, affine = template.shape, template.affine
        xyz = np.stack([values[c].values.astype(float) for c in MNI_COORDS], axis=1)
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), xyz)).astype(np.int64)
    else:
        raise ValueError("no volume coordinates: expected voxel_i/j/k (with the dataset's "
                         "volume_shape and affine) or mni_x/y/z")
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape)), axis=1)
    if not inside.all():
        raise ValueError(f"{int((~inside).sum())} voxels fall outside the volume of shape {shape}")
    volume = np.full(shape, np.nan, dtype=np.float32)
    volume[tuple(ijk.T)] = values.values.astype(np.float32)
    return nib.Nifti1Image(volume, affine)


def plot_volume(data: xr.Dataset | xr.DataArray, variable: str | None = None, *,
                model: str | None = None, diverging: bool = False, cmap: str | None = None,
                vmin: float | None = None, vmax: float | None = None,
                threshold: float | None = None, title: str | None = None,
                display_mode: str = "ortho", cut_coords=None,
                figsize: tuple[float, float] = (7.5, 2.8), dpi: float = 100,
                out: str | Path | None = None) -> Figure:
    """Return a figure of a per-voxel variable (nilearn ``plot_stat_map``).

    MNI-space data is drawn over nilearn's MNI152 template; native-space data over a
    blank background. Voxels without a value are transparent; ``threshold`` hides
    |value| below it. Parameters as :func:`neuroenc.viz.plotting.plot_surface`.
    """
    from nilearn import datasets
    from nilearn import plotting as nplot

    from neuroenc.viz.plotting._common import (DIVERGING_CMAP, SEQUENTIAL_CMAP, _as_dataarray, _color_limits,
                                   _finish, _label, _new_figure)

    values, attrs = _as_dataarray(data, variable, model)
    variable = variable or str(values.name)
    image = volume_image(values, attrs)
    low, high = _color_limits({"all": values.values.astype(float)}, diverging, vmin, vmax)
    fig = _new_figure(figsize, dpi)
    if threshold is None:
        # nilearn draws NaN as 0, and 0 in the colour map would paint the whole volume:
        # a threshold just above 0 keeps the voxels without a value transparent.
        threshold = 1e-6 * max(abs(low), abs(high), 1e-12)
    bg = datasets.load_mni152_template(resolution=1) if _is_mni(attrs, values.coords) else None
    if title is None:
        title = " | ".join(str(p) for p in (attrs.get("model"), attrs.get("subject"), variable) if p)
    with warnings.catch_warnings():  # NaN outside the voxels is the point, not a problem
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        nplot.plot_stat_map(image, bg_img=bg, figure=fig, display_mode=display_mode,
                            cut_coords=cut_coords, cmap=cmap or (DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP),
                            vmin=low if not diverging else None, vmax=high,
                            symmetric_cbar=diverging, threshold=threshold, colorbar=True,
                            title=title, draw_cross=False, black_bg=False)
    fig.text(0.99, 0.01, _label(variable), ha="right", va="bottom", fontsize=8)
    return _finish(fig, out, dpi)


def volume_html(data: xr.Dataset | xr.DataArray, out: str | Path, variable: str | None = None, *,
                model: str | None = None, diverging: bool = False, cmap: str | None = None,
                threshold: float | None = None) -> Path:
    """Write nilearn's interactive ``view_img`` page of a per-voxel variable; return the path."""
    from nilearn import datasets
    from nilearn import plotting as nplot

    from neuroenc.core.cache import atomic_path
    from neuroenc.viz.plotting._common import DIVERGING_CMAP, SEQUENTIAL_CMAP, _as_dataarray

    values, attrs = _as_dataarray(data, variable, model)
    image = volume_image(values, attrs)
    bg = datasets.load_mni152_template(resolution=2) if _is_mni(attrs, values.coords) else False
    view = nplot.view_img(image, bg_img=bg, threshold=threshold, symmetric_cmap=diverging,
                          cmap=cmap or (DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP))
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(view.get_standalone_html())
    return out
