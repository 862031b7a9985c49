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

The plots live in ``surface.py`` (maps on fsaverage, difference maps, ``plot_map`` which
picks the surface or :mod:`neuroenc.viz.volume`), ``roi.py`` (ROI comparisons, scatter)
and ``sweeps.py``; ``_common.py`` holds what they share.
"""

from ._common import DIVERGING_CMAP, SEQUENTIAL_CMAP, VIEWS, quantize_png, save_figure
from .roi import plot_model_scatter, plot_roi_comparison
from .surface import (
                      FsaverageUnavailableError,
                      SurfaceMesh,
                      has_surface_coords,
                      load_fsaverage_mesh,
                      plot_difference_map,
                      plot_map,
                      plot_surface,
                      surface_html,
                      surface_maps,
)
from .sweeps import plot_sweep, read_sweeps

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
