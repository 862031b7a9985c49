"""A self-contained HTML report of one run: tables, surface maps, ROI comparisons, sweeps.

:func:`write_report` reads a run folder (see :mod:`neuroenc.core.runner` for its layout) and
writes one HTML file with every figure embedded as a base64 PNG and the CSS inline, so
the file can be mailed, archived or opened offline; nothing is fetched when it is viewed.

Sections: the run (name, folder, times, device), summary tables (the challenge-style
mean per model; per ROI class the median, mean over subjects +- sem), ROI comparisons
(bar plots per ROI class), surface maps per model and subject, a comparison of the two
best models (vertex scatter and difference map), extra per-vertex maps that recipes
write (e.g. variance partitioning), sweeps (the score against the swept parameter), the
per-ROI table, and the configuration and environment the run recorded.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from neuroenc.evaluation.analysis import (MODEL_DIM, across_subjects, challenge_scores, default_variable,
                               leading_models, load_results, per_vertex_variables, roi_order,
                               roi_table, select_model)
from neuroenc.core.cache import atomic_path
from neuroenc.evaluation.results import roi_coords
from neuroenc.viz.retinotopy import RF_VARIABLES

__all__ = ["write_report", "figure_to_base64"]

#: Per-vertex variables every run has; any other per-vertex variable is a recipe's extra map.
STANDARD_VARIABLES = ("pearson", "r2", "noise_normalized", "noise_ceiling")

def figure_to_base64(fig, *, dpi: float = 80, optimize: bool = True) -> str:
    """Return a matplotlib figure as a base64 PNG (256-colour palette when ``optimize``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    data = buffer.getvalue()
    if optimize:
        from neuroenc.viz.plotting import quantize_png

        data = quantize_png(data)
    return base64.b64encode(data).decode("ascii")


class _Html:
    """Collects the blocks of the report body and its table of contents.

    Blocks are rendered by the jinja2 template ``neuroenc/templates/report.html.j2``
    with autoescaping on: text is escaped there; only tables (pandas ``to_html`` with
    ``escape=True``) and the literal markup given to :meth:`raw` are inserted as is.
    """

    def __init__(self) -> None:
        self.blocks: list[dict] = []
        self.sections: list[tuple[str, str]] = []

    def section(self, title: str) -> None:
        anchor = "s" + str(len(self.sections) + 1)
        self.sections.append((anchor, title))
        self.blocks.append({"kind": "section", "anchor": anchor, "text": title})

    def h3(self, text: str) -> None:
        self.blocks.append({"kind": "h3", "text": text})

    def note(self, text: str) -> None:
        self.blocks.append({"kind": "note", "text": text})

    def table(self, frame: pd.DataFrame, *, index: bool = True, digits: int = 2) -> None:
        if index:  # index names as ordinary header cells: one header row, not two
            frame = frame.reset_index()
        frame.columns = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c)
                         for c in frame.columns]
        self.raw(frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}",
                               border=0, na_rep="", escape=True))

    def facts(self, rows: dict) -> None:
        """A two-column key / value table."""
        self.blocks.append({"kind": "facts", "rows": [(str(k), str(v)) for k, v in rows.items()]})

    def figure(self, fig, alt: str, *, dpi: float) -> None:
        self.blocks.append({"kind": "figure", "alt": alt, "b64": figure_to_base64(fig, dpi=dpi)})

    def pre(self, text: str) -> None:
        self.blocks.append({"kind": "pre", "text": text})

    def raw(self, markup: str) -> None:
        self.blocks.append({"kind": "markup", "html": markup})


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _sweep_baselines(config: dict, models: list[str]) -> list[tuple[str, str]]:
    """Return ``(swept model, its first point at the run's seed)`` for each sweep with a
    headline in the run: what the report compares the selected point with (lambda = 0
    for an alignment sweep written from 0 up)."""
    from neuroenc.core.config import ModelConfig, expand_model

    pairs = []
    for name, spec in (config.get("models") or {}).items():
        if name not in models:
            continue
        try:
            variants = expand_model(name, ModelConfig.model_validate(spec), int(config.get("seed", 0)))
        except (ValueError, KeyError):
            continue
        if variants[0].point and variants[0].name in models:
            pairs.append((name, variants[0].name))
    return pairs


def write_report(run_dir: str | Path, out_path: str | Path | None = None, *,
                 variable: str | None = None,
                 views: Sequence[str] = ("lateral", "medial", "ventral", "posterior"),
                 max_surface_maps: int = 12,
                 rois: str | Sequence[str] | None = None,
                 n_boot: int = 1000, seed: int = 0, dpi: float = 80,
                 data_dir: str | Path | None = None) -> Path:
    """Write a self-contained HTML report of a run folder; return its path.

    Parameters
    ----------
    run_dir : path
        A run folder (``results/<name>/<timestamp>`` or ``.../latest``).
    out_path : path, optional
        Default ``<run_dir>/report.html``.
    variable : str, optional
        The score summarised (default ``noise_normalized`` where present, else ``pearson``).
    views : sequence of str
        Views of the surface maps (see :func:`neuroenc.viz.plotting.plot_surface`).
    max_surface_maps : int
        At most this many (model, subject) surface maps; a sweep contributes its point
        selected on validation only. The report says which maps were left out.
    rois : str or sequence of str, optional
        ROI classes outlined on the surface maps.
    n_boot, seed : int
        Bootstrap of the per-ROI confidence intervals.
    dpi : float
        Resolution of the embedded figures.
    data_dir : path, optional
        nilearn's data folder, for the full fsaverage mesh.

    Returns
    -------
    Path
        The report, written atomically.

    Notes
    -----
    Where the full fsaverage mesh cannot be fetched (offline), the surface sections say
    so and how to provide it; the rest of the report is written.
    """
    from neuroenc.viz import plotting

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    resolved = run_dir.resolve()
    out_path = Path(out_path) if out_path is not None else run_dir / "report.html"
    config = _read_yaml(run_dir / "config.yaml")
    environment = _read_json(run_dir / "environment.json")
    results = load_results(run_dir)
    first = next(iter(results.values()))
    variable = variable or default_variable(results)
    scores = challenge_scores(results, variable)
    models = [str(m) for m in first[MODEL_DIM].values]
    main = leading_models(results, variable)

    doc = _Html()
    name = config.get("name") or resolved.parent.name
    title = f"neuroenc report: {name}"

    # -- the run ---------------------------------------------------------------------
    doc.section("Run")
    if config.get("description"):
        doc.blocks.append({"kind": "paragraph", "text": str(config["description"])})
    rows = {
        "run folder": str(resolved),
        "started": environment.get("started", ""),
        "finished": environment.get("finished", ""),
        "total time (s)": environment.get("timings_s", {}).get("total", ""),
        "device": environment.get("device", ""),
        "dataset": f"{config.get('dataset', {}).get('kind', '')} "
                   f"({first.attrs.get('fsaverage_mesh', '')})",
        "subjects": ", ".join(results),
        "models": ", ".join(models),
        "scored split": ", ".join(sorted({str(ds.attrs.get("split", "")) for ds in results.values()}
                                         | _coord_values(results, "split"))),
        "neuroenc commit": environment.get("neuroenc_git_commit") or "",
        "seed": environment.get("seed", config.get("seed", "")),
    }
    doc.facts(rows)

    # -- summary ---------------------------------------------------------------------
    doc.section("Summary")
    doc.note(f"Challenge-style score: the mean {variable} over every vertex of every subject "
             "(both hemispheres), as on the Algonauts 2023 leaderboard.")
    headline = scores.reindex(main).sort_values(ascending=False)
    doc.table(headline.to_frame(), digits=2)
    if len(headline) < len(scores):
        doc.note("A swept model is its point selected on validation; every point's score on "
                 "the scored split is in the Sweeps section.")
    class_table = roi_table(results, variable, level="roi_class", n_boot=0)
    spread = across_subjects(class_table)
    cell = spread.assign(text=[
        f"{m:.2f}" + (f" ± {s:.2f}" if np.isfinite(s) else "")
        for m, s in zip(spread["mean"], spread["sem"])])
    pivot = cell.pivot(index="model", columns="roi_class", values="text")
    pivot = pivot[[c for c in dict.fromkeys(spread.roi_class) if c in pivot.columns]]
    pivot = pivot.reindex([m for m in main if m in pivot.index])
    doc.note(f"Median {variable} per ROI class (all its ROIs pooled), mean over "
             f"{len(results)} subject(s) ± sem across subjects.")
    doc.table(pivot.loc[~pivot.index.duplicated()])

    # -- ROI comparisons ---------------------------------------------------------------
    doc.section("ROI comparisons")
    compare = main if len(main) <= 6 else main[:6]
    if len(compare) < len(models):
        doc.note(f"Models shown: {', '.join(compare)} (each sweep by its point selected on "
                 "validation; the Sweeps section and the per-ROI table have every point).")
    # one bootstrap for the plots and the per-ROI table (CIs are drawn with one subject)
    boot = n_boot if len(results) == 1 else 0
    class_boot = roi_table(results, variable, level="roi_class", n_boot=boot, seed=seed)
    per_roi = roi_table(results, variable, level="roi", n_boot=n_boot, seed=seed)
    fig = plotting.plot_roi_comparison(results, variable, models=compare, table=class_boot)
    doc.figure(fig, f"{variable} per ROI class", dpi=dpi)
    doc.raw('<div class="grid">')
    for roi_class in roi_coords(first).values():
        if roi_class == "streams":
            continue
        fig = plotting.plot_roi_comparison(results, variable, roi_class=roi_class, models=compare,
                                           table=per_roi)
        doc.figure(fig, f"{variable} per ROI of {roi_class}", dpi=dpi)
    doc.raw("</div>")

    # -- surface maps ----------------------------------------------------------------------
    doc.section("Surface maps" if plotting.has_surface_coords(first) else "Volume maps")
    pairs = [(m, s) for m in main for s in results]
    shown, skipped = pairs[:max_surface_maps], pairs[max_surface_maps:]
    surface_ok = _surfaces(doc, plotting, results, shown, variable, views, rois, dpi, data_dir)
    if skipped and surface_ok:
        doc.note("Not shown (max_surface_maps): " + ", ".join(f"{m} {s}" for m, s in skipped))

    # -- comparison of the two best models ------------------------------------------------
    if len(main) >= 2:
        a, b = main[1], main[0]
        doc.section(f"{b} vs {a}")
        fig = plotting.plot_model_scatter(results, a, b, variable)
        doc.figure(fig, f"{variable} per vertex, {b} against {a}", dpi=dpi)
        if surface_ok:
            subject = next(iter(results))
            fig = plotting.plot_difference_map(results, b, a, variable, subject=subject,
                                               views=views, rois=rois, data_dir=data_dir)
            doc.figure(fig, f"{b} - {a} on the surface, {subject}", dpi=dpi)

    # -- receptive fields (models with an fwrf readout) --------------------------------
    _receptive_fields(doc, results, surface_ok, dpi, data_dir)

    # -- extra per-vertex maps (e.g. variance partitioning) -------------------------------
    extra = [v for v in per_vertex_variables(first)
             if v not in STANDARD_VARIABLES and v not in RF_VARIABLES]
    if extra:
        doc.section("Extra per-vertex maps")
        doc.note("Per-vertex maps written by recipes besides the metrics (e.g. variance "
                 "partitioning: vp_* are R² on the scored split).")
        extra_table = []
        for var in extra:
            t = roi_table(results, var, level="roi_class", n_boot=0)
            s = across_subjects(t)
            s.insert(1, "variable", var)
            extra_table.append(s[["model", "variable", "roi_class", "mean", "sem"]])
        frame = pd.concat(extra_table)
        doc.table(frame.pivot_table(index=["model", "variable"], columns="roi_class",
                                    values="mean", sort=False), digits=3)
        if surface_ok:
            subject = next(iter(results))
            ds = results[subject]
            for model in [str(m) for m in ds[MODEL_DIM].values]:
                one = select_model(ds, model)
                for var in [v for v in extra if v in one]:
                    fig = plotting.plot_surface(one, var, views=views, rois=rois, dpi=dpi,
                                                data_dir=data_dir)
                    doc.figure(fig, f"{var}, {model}, {subject}", dpi=dpi)

    # -- sweeps ---------------------------------------------------------------------
    sweeps = plotting.read_sweeps(run_dir)
    if sweeps or (run_dir / "sweep_summary.csv").is_file():
        doc.section("Sweeps")
        doc.note("Each swept model's headline (in the tables above) is the point selected on a "
                 "validation part of the training images; the scored split took no part in "
                 "the choice. The curves and this table show every point on the scored split, "
                 "for display only: picking the best of them would choose on the test data.")
        if (run_dir / "sweep_summary.csv").is_file():
            table = pd.read_csv(run_dir / "sweep_summary.csv", index_col=[0, 1])
            doc.note(f"Median {variable} per ROI class on the scored split (mean over subjects, "
                     "then mean and sd over seeds); 'all (mean)' is the challenge-style mean; "
                     "'validation ...' is the score the selection used; 'selected' lists the "
                     "subjects whose validation chose the point.")
            doc.table(table.astype(object).where(table.notna(), ""))
        for base, by_subject in sweeps.items():
            fig = plotting.plot_sweep(by_subject, variable, model=base)
            doc.figure(fig, f"{variable} against the swept parameter of {base} (scored split)",
                       dpi=dpi)
        for base, baseline in _sweep_baselines(config, models):
            try:
                from neuroenc.evaluation.compare import compare_run

                paired = compare_run(run_dir, base, baseline, n_boot=n_boot, seed=seed)
            except (OSError, ValueError, KeyError) as exc:
                doc.note(f"{base}: no paired comparison with {baseline} ({exc}).")
                continue
            doc.note(f"{base} (selected point) minus {baseline} (the sweep's first point), "
                     f"paired over the scored images: {paired.attrs['statistic']} "
                     f"{paired.attrs['variable']} per ROI class, {n_boot} bootstrap resamples of "
                     f"the images, {paired.attrs['confidence']:.0%} CI; 'all' pools subjects. "
                     "Where a subject selected the first point itself, its difference is 0.")
            doc.table(paired.drop(columns=[c for c in ("n_vertices",) if c in paired]), index=False)

    # -- per ROI ------------------------------------------------------------------------
    doc.section("Per ROI")
    doc.note(f"Median {variable} per ROI for every model and subject, with the bootstrap "
             f"95% CI of the median over vertices ({n_boot} resamples, seed {seed}).")
    doc.raw("<details><summary>show the table "
            f"({len(per_roi)} rows)</summary>")
    order = {r: i for i, r in enumerate(roi_order(per_roi.roi, per_roi))}
    per_roi = per_roi.sort_values(["model", "subject", "roi_class"], kind="stable")
    per_roi = per_roi.assign(_o=per_roi.roi.map(order)).sort_values(
        ["model", "subject", "_o"], kind="stable").drop(columns="_o")
    doc.table(per_roi, index=False)
    doc.raw("</details>")

    # -- configuration and environment -------------------------------------------------
    doc.section("Configuration")
    doc.note("config.yaml: the registry with every default resolved.")
    doc.pre((run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file()
            else "(no config.yaml)")
    doc.section("Environment")
    versions = environment.get("versions", {})
    if versions:
        doc.table(pd.DataFrame({"package": list(versions), "version": list(versions.values())}),
                  index=False)
    env_rows = {k: environment.get(k) for k in ("platform", "device", "registry", "cache_dir",
                                                  "command") if environment.get(k)}
    env_rows["plugins"] = ", ".join(f"{k} {v}".strip()
                                    for k, v in environment.get("plugins", {}).items())
    doc.facts(env_rows)
    timings = environment.get("timings_s", {})
    if timings:
        doc.raw("<details><summary>timings (s)</summary>")
        doc.table(pd.DataFrame({"step": list(timings), "seconds": list(timings.values())}),
                  index=False)
        doc.raw("</details>")

    page = _page(title, doc, resolved)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_path


def _coord_values(results: dict[str, xr.Dataset], name: str) -> set[str]:
    out: set[str] = set()
    for ds in results.values():
        if name in ds.coords:
            out |= {str(v) for v in np.atleast_1d(ds[name].values)}
    return out


def _surfaces(doc: _Html, plotting, results, pairs, variable, views, rois, dpi, data_dir) -> bool:
    """Add the surface maps; return False (with a note) if the mesh is unavailable."""
    for model, subject in pairs:
        try:
            fig = plotting.plot_map(results[subject], variable, model=model, views=views,
                                    rois=rois, dpi=dpi, data_dir=data_dir)
        except plotting.FsaverageUnavailableError as exc:
            doc.note(f"Surface maps left out: {exc}")
            return False
        doc.figure(fig, f"{variable}, {model}, {subject}", dpi=dpi)
    return True


def _receptive_fields(doc: _Html, results, surface_ok: bool, dpi, data_dir) -> None:
    """Add polar-angle, eccentricity and size maps and pRF coverage of models with RFs."""
    from neuroenc.viz.plotting import FsaverageUnavailableError
    from neuroenc.viz.retinotopy import (has_receptive_fields, plot_retinotopic_map,
                                     plot_visual_field_coverage)

    subject = next(iter(results))
    ds = results[subject]
    with_rf = [one for one in (select_model(ds, str(m)) for m in ds[MODEL_DIM].values)
               if has_receptive_fields(one)]
    if not with_rf:
        return
    doc.section("Receptive fields")
    doc.note(f"Per-vertex receptive fields learnt on the training images ({subject}); "
             "vertices whose training CV score is at most 0.05 are not drawn. Polar angle: "
             "0 = right horizontal meridian, 90 = upper vertical meridian (colour wheel). "
             "Coverage: each ROI's pRF centres (dots) and sizes (circles, one sigma) in the "
             "visual field, left hemisphere orange, right blue; the square is the image.")
    for one in with_rf:
        model = one.attrs.get("model")
        if surface_ok:
            for var in ("rf_angle", "rf_eccentricity", "rf_size"):
                try:
                    fig = plot_retinotopic_map(one, var, dpi=dpi, data_dir=data_dir)
                except FsaverageUnavailableError:
                    break
                doc.figure(fig, f"{var}, {model}, {subject}", dpi=dpi)
        if any(str(c).startswith("roi_prf") for c in one.coords):
            fig = plot_visual_field_coverage(one, dpi=dpi)
            doc.figure(fig, f"pRF coverage per early visual ROI, {model}, {subject}", dpi=dpi)


def _page(title: str, doc: _Html, run_dir: Path) -> str:
    import jinja2

    from neuroenc import __version__

    env = jinja2.Environment(loader=jinja2.PackageLoader("neuroenc.viz", "templates"),
                             autoescape=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2").render(
        title=title, run_dir=str(run_dir), version=__version__, sections=doc.sections,
        blocks=doc.blocks, written=_dt.datetime.now().isoformat(timespec="seconds"))
