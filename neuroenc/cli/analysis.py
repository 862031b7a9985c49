"""The ``neuroenc plot``, ``report`` and ``compare`` commands (added to the main app by :func:`register`).

Kept apart from :mod:`neuroenc.cli` so that the analysis layer (matplotlib, nilearn
plotting) is imported only when one of these commands runs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

__all__ = ["register", "plot", "report", "compare"]

console = Console()
err = Console(stderr=True)


class Kind(str, Enum):
    surface = "surface"
    roi_bar = "roi-bar"
    roi_box = "roi-box"
    scatter = "scatter"
    sweep = "sweep"
    coverage = "coverage"


class View(str, Enum):
    lateral = "lateral"
    medial = "medial"
    ventral = "ventral"
    posterior = "posterior"
    dorsal = "dorsal"
    anterior = "anterior"


# Receptive-field variables drawn with their conventional colour maps (neuroenc.viz.retinotopy).
RETINOTOPIC_VARIABLES = ("rf_angle", "rf_eccentricity", "rf_size")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _model_with_fields(ds) -> str | None:
    """Return the one model of a stacked result that has receptive fields, else None."""
    from neuroenc.evaluation.analysis import MODEL_DIM, select_model
    from neuroenc.viz.retinotopy import has_receptive_fields

    if MODEL_DIM not in ds.dims:
        return None
    names = [str(m) for m in ds[MODEL_DIM].values
             if has_receptive_fields(select_model(ds, str(m)))]
    return names[0] if len(names) == 1 else None


def _default_out(kind: str, parts: list[str | None], suffix: str = ".png") -> Path:
    name = "_".join(p.replace("/", "-").replace("@", "-").replace("=", "-") for p in parts if p)
    return Path(f"{kind}_{name}{suffix}")


def plot(
    results: Annotated[Path, typer.Argument(help="run folder (results/<name>/latest) or a scores.nc file")],
    var: Annotated[Optional[str], typer.Option("--var", "-v", help="per-vertex variable (default noise_normalized)")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="model; repeat to compare several (roi-bar, roi-box)")] = None,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="subject, e.g. subj01 (default: the first)")] = None,
    view: Annotated[Optional[list[View]], typer.Option("--view", help="surface view; repeatable (default: lateral medial ventral posterior)")] = None,
    kind: Annotated[Kind, typer.Option(help="surface map, ROI bar / box plot, model scatter, sweep curve, or visual-field coverage of receptive fields per ROI")] = Kind.surface,
    minus: Annotated[Optional[str], typer.Option("--minus", help="surface: plot MODEL minus this model (diverging map); scatter: the x-axis model")] = None,
    rois: Annotated[Optional[list[str]], typer.Option("--rois", help="surface: outline the ROIs of this class, e.g. floc-faces; repeatable")] = None,
    roi_class: Annotated[Optional[str], typer.Option("--roi-class", help="roi-bar / roi-box: the ROIs of this class (default: ROI classes pooled)")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="surface: hide vertices with |value| below this")] = None,
    vmin: Annotated[Optional[float], typer.Option(help="lower colour limit")] = None,
    vmax: Annotated[Optional[float], typer.Option(help="upper colour limit")] = None,
    cmap: Annotated[Optional[str], typer.Option(help="matplotlib colour map")] = None,
    diverging: Annotated[bool, typer.Option("--diverging", help="surface: diverging colour map symmetric around 0")] = False,
    dpi: Annotated[int, typer.Option(help="resolution of the PNG")] = 100,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="PNG to write (default: a descriptive name in the current folder)")] = None,
    html: Annotated[bool, typer.Option("--html", help="surface: also write interactive HTML views (needs plotly)")] = False,
) -> None:
    """Plot a result: a per-vertex variable on the fsaverage surface (or a per-voxel one in
    the volume), ROI comparisons, scatter, sweeps."""
    from neuroenc.evaluation.analysis import default_variable, load_results, select_model
    from neuroenc.viz.plotting import (FsaverageUnavailableError, has_surface_coords,
                                       plot_difference_map, plot_map, plot_model_scatter,
                                       plot_roi_comparison, plot_sweep, surface_html)
    from neuroenc.viz.retinotopy import plot_retinotopic_map, plot_visual_field_coverage

    models = list(model or [])
    views = [v.value for v in view] if view else ["lateral", "medial", "ventral", "posterior"]
    if html and kind is Kind.surface and minus is None:
        import importlib.util

        if importlib.util.find_spec("plotly") is None:  # fail before drawing anything
            _fail("--html: interactive surface views use nilearn's plotly engine; install it "
                  "with `pip install plotly` (PNG plots need only matplotlib)")
    try:
        if kind is Kind.sweep:
            from neuroenc.viz.plotting import read_sweeps

            swept = models[0] if models else next(iter(read_sweeps(results)), None)
            target = out or _default_out("sweep", [swept, var or "score"])
            plot_sweep(results, var, model=swept, dpi=dpi, out=target)
            console.print(f"wrote {target}")
            return
        loaded = load_results(results)
        subject_id = subject or next(iter(loaded))
        if subject_id not in loaded:
            _fail(f"{results}: no subject {subject_id!r}; found: {', '.join(loaded)}")
        ds = loaded[subject_id]
        variable = var or default_variable(ds)
        if kind is Kind.surface:
            name = models[0] if models else None
            if len(models) > 1:
                _fail("surface plots take one --model (use --minus for a difference map)")
            if minus is not None:
                if name is None:
                    _fail("--minus needs --model: the map shows MODEL minus the --minus model")
                target = out or _default_out("surface", [name, "minus", minus, subject_id, variable])
                plot_difference_map(ds, name, minus, variable, views=views, rois=rois,
                                    threshold=threshold, vmin=vmin, vmax=vmax, cmap=cmap, dpi=dpi,
                                    out=target)
            elif variable in RETINOTOPIC_VARIABLES and not diverging:
                # polar angle, eccentricity, pRF size: conventional colour maps (cyclic with a
                # colour wheel for angle), ROI outlines of the early visual areas by default
                one = select_model(ds, name or _model_with_fields(ds))
                target = out or _default_out("surface", [one.attrs["model"], subject_id, variable])
                plot_retinotopic_map(one, variable, views=views if view else
                                     ("medial", "ventral", "posterior"),
                                     rois=rois if rois else "prf-visualrois", vmin=vmin,
                                     vmax=vmax, cmap=cmap, dpi=dpi, out=target)
            else:
                one = select_model(ds, name)
                target = out or _default_out("surface", [one.attrs["model"], subject_id, variable])
                plot_map(one, variable, views=views, rois=rois, threshold=threshold, vmin=vmin,
                         vmax=vmax, cmap=cmap, diverging=diverging, dpi=dpi, out=target)
                if html and not has_surface_coords(one):
                    from neuroenc.viz.volume import volume_html

                    page = volume_html(one, target.with_suffix(".html"), variable,
                                       diverging=diverging, cmap=cmap, threshold=threshold)
                    console.print(f"wrote {page}")
                elif html:
                    for hemi in ("lh", "rh"):
                        page = target.with_name(f"{target.stem}_{hemi}.html")
                        surface_html(one, page, variable, hemisphere=hemi, diverging=diverging,
                                     cmap=cmap, vmin=vmin, vmax=vmax, threshold=threshold)
                        console.print(f"wrote {page}")
        elif kind is Kind.coverage:
            one = select_model(ds, models[0] if models else _model_with_fields(ds))
            chosen_class = roi_class or "prf-visualrois"
            target = out or _default_out("coverage", [one.attrs["model"], subject_id, chosen_class])
            plot_visual_field_coverage(one, roi_class=chosen_class, dpi=dpi, out=target)
        elif kind in (Kind.roi_bar, Kind.roi_box):
            chosen = loaded if subject is None else {subject_id: ds}
            target = out or _default_out(kind.value, [roi_class, subject, variable])
            plot_roi_comparison(chosen, variable, roi_class=roi_class, models=models or None,
                                kind="bar" if kind is Kind.roi_bar else "box", dpi=dpi, out=target)
        else:  # scatter
            if len(models) != 1 or minus is None:
                _fail("scatter needs --model Y_MODEL and --minus X_MODEL (the two models compared)")
            chosen = loaded if subject is None else {subject_id: ds}
            target = out or _default_out("scatter", [models[0], "vs", minus, subject, variable])
            plot_model_scatter(chosen, minus, models[0], variable, dpi=dpi, out=target)
        if html and (kind is not Kind.surface or minus is not None):
            err.print("[yellow]note:[/] --html applies to single-model surface maps only")
    except (KeyError, ValueError, FileNotFoundError, FsaverageUnavailableError, ImportError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    console.print(f"wrote {target}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="run folder, e.g. results/demo/latest")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default <run_dir>/report.html)")] = None,
    var: Annotated[Optional[str], typer.Option("--var", "-v", help="score to summarise (default noise_normalized)")] = None,
    rois: Annotated[Optional[list[str]], typer.Option("--rois", help="outline the ROIs of this class on surface maps; repeatable")] = None,
    max_maps: Annotated[int, typer.Option(help="at most this many surface maps")] = 12,
    view: Annotated[Optional[list[View]], typer.Option("--view", help="surface view; repeatable (default: lateral medial ventral posterior)")] = None,
) -> None:
    """Write a self-contained HTML report of a run: tables, surface maps, ROI comparisons, sweeps."""
    from neuroenc.viz.report import write_report

    views = [v.value for v in view] if view else ["lateral", "medial", "ventral", "posterior"]
    try:
        path = write_report(run_dir, out, variable=var, rois=rois, max_surface_maps=max_maps,
                            views=views)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    console.print(f"wrote {path}")


def compare(
    run_dir: Annotated[Path, typer.Argument(help="run folder (results/<name>/latest)")],
    model_a: Annotated[str, typer.Argument(help="model A (e.g. a selected sweep point)")],
    model_b: Annotated[str, typer.Argument(help="model B (e.g. the baseline)")],
    level: Annotated[str, typer.Option(help="roi_class or roi")] = "roi_class",
    var: Annotated[Optional[str], typer.Option("--var", "-v", help="noise_normalized (default where there is a noise ceiling), pearson or r2")] = None,
    statistic: Annotated[str, typer.Option(help="median or mean over each ROI's vertices")] = "median",
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the scored images")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the resamples")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="CSV to write (default compare_<A>_vs_<B>.csv)")] = None,
    plot_out: Annotated[Optional[Path], typer.Option("--plot", help="also write the difference map (first subject) as PNG")] = None,
) -> None:
    """Compare two models on the same scored images: per ROI the difference A - B with a
    bootstrap CI over images (not vertices) and the fraction of vertices where A wins."""
    from rich.table import Table

    from neuroenc.core.cache import atomic_path
    from neuroenc.evaluation.compare import compare_run

    if level not in ("roi", "roi_class") or statistic not in ("median", "mean"):
        _fail(f"--level {level!r} / --statistic {statistic!r}: expected roi or roi_class / median or mean")
    if var not in (None, "noise_normalized", "pearson", "r2"):
        _fail(f"--var {var!r}: expected noise_normalized, pearson or r2")
    try:
        table = compare_run(run_dir, model_a, model_b, level=level, variable=var,
                            statistic=statistic, n_boot=n_boot, seed=seed)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    variable = table.attrs["variable"]
    shown = Table(title=f"{model_a} - {model_b}: {statistic} {variable} per "
                        f"{level.replace('_', ' ')}, 95% CI from {n_boot} resamples of the images",
                  title_justify="left", padding=(0, 1))
    keys = ["subject", "roi_class"] + (["roi"] if level == "roi" else [])
    for column in keys + ["n_vertices", "A", "B", "A - B", "95% CI", "A better"]:
        shown.add_column(column, justify="left" if column in keys else "right")
    for row in table.itertuples(index=False):
        mark = "" if row.ci_low <= 0 <= row.ci_high else " *"
        shown.add_row(*[str(getattr(row, k)) for k in keys], str(row.n_vertices), f"{row.a:.2f}",
                      f"{row.b:.2f}", f"{row.difference:+.2f}{mark}",
                      f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]", f"{row.fraction_a_better:.0%}")
    console.print(shown)
    console.print("* the interval excludes 0", highlight=False)
    target = out or Path(f"compare_{model_a}_vs_{model_b}.csv".replace("/", "_"))
    with atomic_path(target) as tmp:
        table.to_csv(tmp, index=False)
    console.print(f"wrote {target}")
    if plot_out is not None:
        from neuroenc.evaluation.analysis import load_results
        from neuroenc.viz.plotting import plot_difference_map

        plot_difference_map(load_results(run_dir), model_a, model_b, variable, out=plot_out)
        console.print(f"wrote {plot_out}")


def register(app: typer.Typer) -> None:
    """Add the ``plot``, ``report`` and ``compare`` commands to ``app`` (once)."""
    names = {getattr(c, "name", None) or getattr(c.callback, "__name__", None)
             for c in app.registered_commands}
    if "plot" not in names:
        app.command("plot")(plot)
    if "report" not in names:
        app.command("report")(report)
    if "compare" not in names:
        app.command("compare")(compare)
