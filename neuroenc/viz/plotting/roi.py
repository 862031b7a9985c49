"""ROI comparisons (bar / box per ROI or ROI class) and vertex-by-vertex model scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import xarray as xr

from neuroenc.evaluation.analysis import (
    MODEL_DIM,
    across_subjects,
    dataset_roi_order,
    default_variable,
    roi_order,
    roi_table,
    select_model,
)
from neuroenc.evaluation.results import roi_coords

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ._common import _finish, _label, _new_figure, _subject_dataset

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
        A :func:`neuroenc.evaluation.analysis.roi_table` of these results at the matching level
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


