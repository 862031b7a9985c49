"""The ``neuroenc plot`` and ``neuroenc report`` commands (added to the main app by :func:`register`).

Kept apart from :mod:`neuroenc.cli` so that the analysis layer (matplotlib, nilearn
plotting) is imported only when one of these commands runs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

__all__ = ["register", "plot", "report"]

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


# Receptive-field variables drawn with their conventional colour maps (neuroenc.retinotopy).
RETINOTOPIC_VARIABLES = ("rf_angle", "rf_eccentricity", "rf_size")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _model_with_fields(ds) -> str | None:
    """Return the one model of a stacked result that has receptive fields, else None."""
    from neuroenc.analysis import MODEL_DIM, select_model
    from neuroenc.retinotopy import has_receptive_fields

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
    """Plot a result: a per-vertex variable on the fsaverage surface, ROI comparisons, scatter, sweeps."""
    from neuroenc.analysis import default_variable, load_results, select_model
    from neuroenc.plotting import (FsaverageUnavailableError, plot_difference_map, plot_model_scatter,
                                   plot_roi_comparison, plot_surface, plot_sweep, surface_html)
    from neuroenc.retinotopy import plot_retinotopic_map, plot_visual_field_coverage

    models = list(model or [])
    views = [v.value for v in view] if view else ["lateral", "medial", "ventral", "posterior"]
    if html and kind is Kind.surface and minus is None:
        import importlib.util

        if importlib.util.find_spec("plotly") is None:  # fail before drawing anything
            _fail("--html: interactive surface views use nilearn's plotly engine; install it "
                  "with `pip install plotly` (PNG plots need only matplotlib)")
    try:
        if kind is Kind.sweep:
            from neuroenc.plotting import read_sweeps

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
                plot_surface(one, variable, views=views, rois=rois, threshold=threshold, vmin=vmin,
                             vmax=vmax, cmap=cmap, diverging=diverging, dpi=dpi, out=target)
                if html:
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
    from neuroenc.report import write_report

    views = [v.value for v in view] if view else ["lateral", "medial", "ventral", "posterior"]
    try:
        path = write_report(run_dir, out, variable=var, rois=rois, max_surface_maps=max_maps,
                            views=views)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the ``plot`` and ``report`` commands to ``app`` (once; calling again does nothing)."""
    names = {getattr(c, "name", None) or getattr(c.callback, "__name__", None)
             for c in app.registered_commands}
    if "plot" not in names:
        app.command("plot")(plot)
    if "report" not in names:
        app.command("report")(report)
