"""Sweep curves: a score against the swept parameter, per ROI class."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from neuroenc.evaluation.analysis import default_variable
from neuroenc.evaluation.results import roi_coords

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ._common import _finish, _label, _new_figure

# --------------------------------------------------------------------------- sweeps


def read_sweeps(run_dir: str | Path) -> dict[str, dict[str, xr.Dataset]]:
    """Return ``{base model: {subject: sweep Dataset}}`` from ``models/<base>/<subject>/sweep.nc``."""
    from neuroenc.evaluation.results import read_netcdf

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
    n_seeds = max(_n_seeds(ds) for ds in sweeps.values())
    sweeps = {subject: _mean_over_seeds(ds) for subject, ds in sweeps.items()}
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
    params = [k for k in json.loads(first.attrs.get("sweep_parameters", "[]") or "[]")
              if k != "seed"]
    ax.set_xlabel(", ".join(params) or dim, fontsize=8)
    ax.set_ylabel(_label(variable), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5),
              title="ROI class (median)", title_fontsize=7)
    seeds = f", mean of {n_seeds} seeds" if n_seeds > 1 else ""
    fig.suptitle(title or f"sweep of {model}, scored split ({len(sweeps)} "
                 f"subject{'s' * (len(sweeps) > 1)}{seeds})", fontsize=9)
    return _finish(fig, out, dpi)


def _n_seeds(ds: xr.Dataset) -> int:
    if "seed" not in ds.coords or ds["seed"].dims != (_sweep_dim(ds),):
        return 1
    return len(set(ds["seed"].values.tolist()))


def _mean_over_seeds(ds: xr.Dataset) -> xr.Dataset:
    """Return a sweep with its ``seed`` coordinate (replicates) averaged out, per vertex."""
    dim = _sweep_dim(ds)
    if "seed" not in ds.coords or ds["seed"].dims != (dim,):
        return ds
    others = [str(c) for c in ds.coords if ds[c].dims == (dim,) and c != "seed"]
    keys = list(zip(*[ds[c].values.tolist() for c in others])) if others else [()] * ds.sizes[dim]
    unique = list(dict.fromkeys(keys))
    new_dim = others[0] if len(others) == 1 else "sweep_point"
    parts = [ds.isel({dim: [i for i, k in enumerate(keys) if k == u]}).drop_vars(
        others + ["seed"]).mean(dim, keep_attrs=True) for u in unique]
    out = xr.concat(parts, dim=new_dim, combine_attrs="override")
    for j, coord in enumerate(others):
        out = out.assign_coords({coord: (new_dim, [u[j] for u in unique])})
    if not others:
        out = out.assign_coords({new_dim: (new_dim, ["(seeds)"])})
    return out


def _short(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _point_label(ds: xr.Dataset, dim: str, i: int) -> str:
    if dim != "sweep_point":
        return _short(ds[dim].values[i])
    params = [c for c in ds.coords if ds[c].dims == (dim,)]
    return ", ".join(f"{c}={_short(ds[c].values[i])}" for c in params)


