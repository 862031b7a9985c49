"""Analysis of results: many runs and models side by side, ROI summaries with their spread.

:mod:`neuroenc.evaluation.results` reads and summarises one result (one model on one subject). This
module puts results next to each other:

* :func:`load_results` reads one or more run folders into one Dataset per subject with a
  ``model`` dimension (models stacked; subjects keep separate Datasets because their
  challenge spaces have different vertex counts), and :func:`load_results_long` into one
  long pandas table (a row per model, subject and vertex) for seaborn-style plotting.
* :func:`roi_table` gives per model, subject and ROI (or ROI class) the count, median and
  mean of a variable with a seeded bootstrap confidence interval of the median over
  vertices; :func:`across_subjects` gives the spread over subjects (std and sem).
* :func:`challenge_scores` is the challenge's number per model: the mean over every vertex
  of every subject (both hemispheres).

Per-model attributes that differ between stacked models (``split``, ``model_config``,
``sweep_point`` ...) become coordinates along ``model``; attributes shared by every model
of a subject stay attributes.

Example
-------
>>> from neuroenc.evaluation.analysis import load_results, roi_table, across_subjects
>>> results = load_results("results/demo/latest")            # doctest: +SKIP
>>> results["subj01"].noise_normalized.sel(model="ridge-effnet").median()   # doctest: +SKIP
>>> table = roi_table(results, "noise_normalized", level="roi_class")     # doctest: +SKIP
>>> across_subjects(table)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from neuroenc.evaluation.metrics import challenge_score
from neuroenc.evaluation.results import ROI_PREFIX, load_run, read_netcdf, roi_groups, roi_summary

__all__ = [
    "MODEL_DIM",
    "load_results",
    "load_results_long",
    "default_variable",
    "per_vertex_variables",
    "select_model",
    "model_difference",
    "roi_table",
    "across_subjects",
    "challenge_scores",
    "leading_models",
    "bootstrap_median_ci",
    "roi_order",
    "dataset_roi_order",
]

MODEL_DIM = "model"


# --------------------------------------------------------------------------- loading


def _result_files(path: Path) -> list[Path]:
    """Return the scores.nc files under a run folder, or the file itself."""
    if path.is_file():
        if path.suffix != ".nc":
            raise ValueError(f"{path}: not a results file (expected a run folder or a "
                             "models/<model>/<subject>/scores.nc file)")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder or results file")
    files = sorted(path.glob("models/*/*/scores.nc"))
    if not files and (path / "latest").is_dir():  # results/<name>/ given: use its newest run
        files = sorted((path / "latest").glob("models/*/*/scores.nc"))
    if not files:
        raise FileNotFoundError(f"{path}: no results (expected models/<model>/<subject>/scores.nc "
                                "below it; is this a neuroenc run folder?)")
    return files


def _read_all(paths: Sequence[Path]) -> list[tuple[Path, xr.Dataset]]:
    found = []
    for path in paths:
        if path.is_dir() and (path / "models").is_dir():
            # load_run is the one reader of a run folder; keep using it for folders
            for ds in load_run(path).values():
                found.append((path, ds))
        else:
            for file in _result_files(path):
                found.append((path, read_netcdf(file)))
    return found


def _run_label(path: Path) -> str:
    resolved = path.resolve()
    return resolved.parent.name if resolved.is_file() else resolved.name


def load_results(run_dirs: str | Path | Iterable[str | Path], *,
                 models: Sequence[str] | None = None,
                 subjects: Sequence[str] | None = None) -> dict[str, xr.Dataset]:
    """Return ``{subject: Dataset}`` with every model's results stacked along ``model``.

    Parameters
    ----------
    run_dirs : path or iterable of paths
        Run folders (``results/<name>/<timestamp>`` or ``.../latest``), a results folder
        holding a ``latest`` link, or single ``scores.nc`` files.
    models, subjects : sequence of str, optional
        Keep only these models / subjects (in the order given for models).

    Returns
    -------
    results : dict of str to xarray.Dataset
        One Dataset per subject, ordered by subject. Each per-vertex variable has dims
        ``(model, vertex)``; ``noise_ceiling`` is ``(vertex,)`` when all models share it.
        Coordinates: ``model`` and per-model attributes that differ between models
        (``split``, ``model_config``, ``sweep_base``, ``sweep_point`` ... as strings);
        the vertex coordinates of :mod:`neuroenc.evaluation.results`. A variable one model lacks
        (e.g. variance-partitioning maps) is NaN for the others.

    Notes
    -----
    A model name present in several runs is relabelled ``<run folder>/<model>`` for
    each of them, so that two runs of one model can be compared.

    Raises
    ------
    FileNotFoundError
        A path holds no results.
    ValueError
        Two results of one subject disagree on the vertices (different datasets), or a
        requested model or subject is absent (the message lists what is there).
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("load_results: no run folders given")
    entries = _read_all(paths)

    # (model, subject) seen in more than one run -> label by run folder
    runs_of: dict[str, set[str]] = {}
    for path, ds in entries:
        runs_of.setdefault(ds.attrs["model"], set()).add(str(path.resolve()))
    per_subject: dict[str, dict[str, xr.Dataset]] = {}
    for path, ds in entries:
        model = ds.attrs["model"]
        label = f"{_run_label(path)}/{model}" if len(runs_of[model]) > 1 else model
        subject = ds.attrs["subject"]
        if label in per_subject.setdefault(subject, {}):
            raise ValueError(f"{path}: model {label!r} appears twice for {subject}")
        ds.attrs["run_dir"] = str(path.resolve())
        per_subject[subject][label] = ds

    if subjects is not None:
        missing = [s for s in subjects if s not in per_subject]
        if missing:
            raise ValueError(f"subjects {missing} not in the results; found: "
                             f"{', '.join(sorted(per_subject))}")
        per_subject = {s: per_subject[s] for s in subjects}
    out = {}
    for subject in sorted(per_subject):
        by_model = per_subject[subject]
        if models is not None:
            missing = [m for m in models if m not in by_model]
            if missing:
                raise ValueError(f"{subject}: models {missing} not in the results; found: "
                                 f"{', '.join(by_model)}")
            by_model = {m: by_model[m] for m in models}
        out[subject] = _stack_models(subject, by_model)
    return out


def _stack_models(subject: str, by_model: Mapping[str, xr.Dataset]) -> xr.Dataset:
    names = list(by_model)
    first = by_model[names[0]]
    # The unit coordinates (hemisphere, fsaverage_index, voxel_i ...; not ROI labels)
    # must agree between the stacked models.
    unit_coords = [str(c) for c in first.coords if first[c].dims == ("vertex",)
                   and not str(c).startswith(ROI_PREFIX)]
    for name in names[1:]:
        ds = by_model[name]
        for coord in unit_coords:
            if ds.sizes["vertex"] != first.sizes["vertex"] or coord not in ds.coords or not np.array_equal(
                    ds[coord].values, first[coord].values):
                raise ValueError(
                    f"{subject}: model {name!r} ({ds.attrs.get('run_dir')}) has different "
                    f"vertices than model {names[0]!r} ({first.attrs.get('run_dir')}): "
                    f"coordinate {coord!r} differs ({ds.sizes['vertex']} vs "
                    f"{first.sizes['vertex']} vertices); results of one subject must come "
                    "from the same dataset")
    variables = list(dict.fromkeys(v for ds in by_model.values() for v in ds.data_vars))
    shared_nc = all("noise_ceiling" in ds for ds in by_model.values()) and all(
        np.array_equal(ds["noise_ceiling"].values, first["noise_ceiling"].values, equal_nan=True)
        for ds in by_model.values())

    data_vars = {}
    n_vertices = first.sizes["vertex"]
    for var in variables:
        if var == "noise_ceiling" and shared_nc:
            data_vars[var] = ("vertex", first[var].values)
            continue
        stacked = np.full((len(names), n_vertices), np.nan, dtype=np.float32)
        for i, name in enumerate(names):
            if var in by_model[name]:
                stacked[i] = by_model[name][var].values
        data_vars[var] = ((MODEL_DIM, "vertex"), stacked)

    coords = {name: ("vertex", first[name].values) for name in first.coords
              if first[name].dims == ("vertex",)}
    coords[MODEL_DIM] = (MODEL_DIM, np.array(names, dtype=str))
    attrs = {}
    keys = list(dict.fromkeys(k for ds in by_model.values() for k in ds.attrs))
    for key in keys:
        values = [by_model[n].attrs.get(key, "") for n in names]
        strings = [v if isinstance(v, str) else json.dumps(_plain(v)) for v in values]
        if key == "model":
            continue
        if len(set(strings)) == 1:
            attrs[key] = values[0]
        else:
            coords[key] = (MODEL_DIM, np.array(strings, dtype=str))
    attrs["subject"] = subject
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_results_long(run_dirs: str | Path | Iterable[str | Path], *,
                      variables: Sequence[str] | None = None,
                      models: Sequence[str] | None = None,
                      subjects: Sequence[str] | None = None) -> pd.DataFrame:
    """Return one row per model, subject and vertex (a long table for grouped plots).

    Columns: ``model``, ``subject``, ``vertex`` (index within the subject), the vertex
    coordinates (``hemisphere``, ``fsaverage_index``, ``roi_<class>`` ...) and one
    column per variable (default: every per-vertex variable).
    """
    results = load_results(run_dirs, models=models, subjects=subjects)
    frames = []
    for subject, ds in results.items():
        names = per_vertex_variables(ds) if variables is None else list(variables)
        missing = [v for v in names if v not in ds]
        if missing:
            raise ValueError(f"{subject}: no variable {missing}; found: "
                             f"{', '.join(per_vertex_variables(ds))}")
        for model in ds[MODEL_DIM].values:
            one = select_model(ds, str(model))
            frame = pd.DataFrame({name: one[name].values for name in one.coords
                                  if one[name].dims == ("vertex",)})
            for var in names:
                frame[var] = one[var].values
            frame.insert(0, "vertex", np.arange(one.sizes["vertex"]))
            frame.insert(0, "subject", subject)
            frame.insert(0, "model", str(model))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- selection


def per_vertex_variables(ds: xr.Dataset) -> list[str]:
    """Return the names of the data variables with a ``vertex`` dimension."""
    return [str(v) for v in ds.data_vars if "vertex" in ds[v].dims]


def default_variable(ds: xr.Dataset | Mapping[str, xr.Dataset]) -> str:
    """Return ``noise_normalized`` where present, else ``pearson``, else the first variable."""
    datasets = [ds] if isinstance(ds, xr.Dataset) else list(ds.values())
    for name in ("noise_normalized", "pearson"):
        if all(name in d for d in datasets):
            return name
    return per_vertex_variables(datasets[0])[0]


def select_model(ds: xr.Dataset, model: str | None = None) -> xr.Dataset:
    """Return one model's result (dims ``vertex`` only) from a stacked or single Dataset.

    ``model`` may be omitted when there is only one. The returned Dataset has the
    ``model`` attribute set, so it can go to :func:`neuroenc.evaluation.results.roi_summary`.

    Raises
    ------
    KeyError
        The model is not there, or several are and none was named; lists the models.
    """
    if MODEL_DIM not in ds.dims:
        if model is not None and ds.attrs.get("model") not in (None, model):
            raise KeyError(f"result is model {ds.attrs.get('model')!r}, not {model!r}")
        return ds
    names = [str(m) for m in ds[MODEL_DIM].values]
    if model is None:
        if len(names) != 1:
            raise KeyError(f"{ds.attrs.get('subject', 'results')}: {len(names)} models, name one "
                           f"of: {', '.join(names)}")
        model = names[0]
    if model not in names:
        from neuroenc.core.plugins import suggest

        raise KeyError(f"{ds.attrs.get('subject', 'results')}: no model {model!r}; found: "
                       f"{', '.join(names)}{suggest(model, names)}")
    per_model = [str(c) for c in ds.coords if MODEL_DIM in ds[c].dims]
    one = ds.sel({MODEL_DIM: model}).drop_vars(per_model)
    attrs = dict(ds.attrs)
    for coord in per_model:
        if coord != MODEL_DIM:
            attrs[coord] = str(ds[coord].sel({MODEL_DIM: model}).values)
    attrs["model"] = model
    one.attrs = attrs
    # variables this model lacks are all-NaN after stacking: drop them
    missing = [v for v in per_vertex_variables(one) if bool(np.isnan(one[v].values).all())]
    return one.drop_vars(missing)


def model_difference(results: Mapping[str, xr.Dataset] | xr.Dataset, model_a: str,
                     model_b: str, variable: str) -> dict[str, xr.DataArray]:
    """Return per subject ``variable`` of ``model_a`` minus that of ``model_b``.

    Returns
    -------
    differences : dict of str to xarray.DataArray of shape (n_vertices,)
        With the vertex coordinates, named ``f"{variable} {model_a} - {model_b}"``.
    """
    if isinstance(results, xr.Dataset):
        results = {results.attrs.get("subject", "subject"): results}
    out = {}
    for subject, ds in results.items():
        a = select_model(ds, model_a)
        b = select_model(ds, model_b)
        for name, one in ((model_a, a), (model_b, b)):
            if variable not in one:
                raise KeyError(f"{subject}: model {name!r} has no variable {variable!r}; "
                               f"found: {', '.join(per_vertex_variables(one))}")
        diff = a[variable] - b[variable]
        diff.name = f"{variable} {model_a} - {model_b}"
        out[subject] = diff
    return out


# --------------------------------------------------------------------------- summaries


def dataset_roi_order(source: xr.Dataset | pd.DataFrame | Mapping) -> list[str]:
    """Return the ROI names of a result in their dataset's conventional (label) order.

    Readers give it (:attr:`neuroenc.data.subject.SubjectData.roi_order`); results keep
    it as the ``roi_order`` attribute (JSON), tables from :func:`roi_table` as
    ``table.attrs["roi_order"]``. Empty when the result does not say.
    """
    attrs = source.attrs if hasattr(source, "attrs") else source
    raw = attrs.get("roi_order", "")
    order = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
    return [name for names in order.values() for name in names]


def roi_order(names: Iterable[str],
              known: Iterable[str] | xr.Dataset | xr.DataArray | pd.DataFrame = ()) -> list[str]:
    """Return ROI names sorted by a known order (e.g. V1v, V1d, V2v ...), unknown ones last.

    Results keep ROI names, not label numbers, so tables and plots would otherwise show
    ROIs in the order their first vertex happens to appear. ``known`` is a sequence of
    names or a result (Dataset or DataArray) / table whose :func:`dataset_roi_order` is used.
    """
    if isinstance(known, (xr.Dataset, xr.DataArray, pd.DataFrame)):
        known = dataset_roi_order(known)
    rank = {name: i for i, name in enumerate(known)}
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def bootstrap_median_ci(values: np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95,
                        rng: np.random.Generator | int = 0,
                        chunk: int = 2_000_000) -> tuple[float, float]:
    """Return the percentile bootstrap confidence interval of the median (scipy.stats.bootstrap).

    Parameters
    ----------
    values : ndarray of shape (n,)
        E.g. one ROI's per-vertex scores. NaNs are dropped.
    n_boot : int
        Bootstrap resamples (vertices drawn with replacement).
    confidence : float
        Coverage of the interval, e.g. 0.95 for the 2.5th and 97.5th percentiles.
    rng : numpy Generator or int seed
    chunk : int
        Resampled values held at once (bounds memory for large ROIs).

    Notes
    -----
    Vertices are resampled as if independent; neighbouring vertices are correlated, so
    the interval is narrower than a resampling of subjects or images would give. It
    says how precisely the median of *these* vertices is known, not how a new subject
    would score; :func:`across_subjects` gives the between-subject spread.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), found {confidence}")
    if values.size == 1:  # every resample is the one value
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.median, n_resamples=n_boot,
                             confidence_level=confidence, method="percentile",
                             batch=max(1, chunk // values.size), vectorized=True,
                             random_state=np.random.default_rng(rng))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _group_seed(seed: int, *parts: str) -> np.random.Generator:
    # One generator per (model, subject, ROI): a group's interval does not change when
    # other models or ROIs are added to the table.
    key = zlib.crc32("|".join(parts).encode())
    return np.random.default_rng([int(seed), key])


def _iter_models(results: Mapping[str, xr.Dataset] | xr.Dataset | Iterable[xr.Dataset]):
    """Yield single-model Datasets from stacked results, a Dataset or an iterable of them."""
    if isinstance(results, xr.Dataset):
        results = [results]
    elif isinstance(results, Mapping):
        results = list(results.values())
    for ds in results:
        if MODEL_DIM in ds.dims:
            for model in ds[MODEL_DIM].values:
                yield select_model(ds, str(model))
        else:
            yield ds


def roi_table(results: Mapping[str, xr.Dataset] | xr.Dataset | Iterable[xr.Dataset],
              variable: str | None = None, *, level: Literal["roi", "roi_class"] = "roi",
              n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Return per model, subject and ROI (or ROI class): count, median, mean, bootstrap CI.

    Parameters
    ----------
    results : dict of subject to stacked Dataset (:func:`load_results`), a Dataset, or
        an iterable of single-model Datasets (e.g. ``load_run(...).values()``)
    variable : str, optional
        Default :func:`default_variable`.
    level : {"roi", "roi_class"}
        One row per ROI (``V1v``, ``FFA-1`` ...; built on
        :func:`neuroenc.evaluation.results.roi_summary`) or per ROI class with its ROIs pooled
        (:func:`neuroenc.evaluation.results.roi_class_summary`). Either way the first row of each
        model and subject is ``roi_class == 'all'`` (every vertex).
    n_boot : int
        Bootstrap resamples for the CI of the median over vertices; 0 skips the CI.
    confidence : float
    seed : int
        The CIs are reproducible for a given seed.

    Returns
    -------
    table : pandas.DataFrame
        Columns ``model``, ``subject``, ``roi_class``, [``roi``], ``n_vertices``,
        ``median``, ``mean``, ``median_ci_low``, ``median_ci_high``.
        ``table.attrs["variable"]`` names the variable.
    """
    frames = []
    models = list(_iter_models(results))
    if not models:
        raise ValueError("roi_table: no results")
    if variable is None:
        variable = default_variable(models[0])
    for ds in models:
        if variable not in ds:
            continue  # e.g. a variance-partitioning map only one model has
        frame = roi_summary(ds, variable, level)
        if n_boot > 0:
            values = ds[variable].values
            # the same groups, in the same order, as the rows of roi_summary
            cis = [bootstrap_median_ci(values[mask], n_boot=n_boot, confidence=confidence,
                                       rng=_group_seed(seed, ds.attrs["model"], ds.attrs["subject"],
                                                       *((cls, roi) if level == "roi" else (cls,))))
                   for cls, roi, mask in roi_groups(ds, level)]
            frame["median_ci_low"] = [c[0] for c in cis]
            frame["median_ci_high"] = [c[1] for c in cis]
        frame.insert(0, "subject", ds.attrs["subject"])
        frame.insert(0, "model", ds.attrs["model"])
        frames.append(frame)
    if not frames:
        raise KeyError(f"no result has variable {variable!r}; found: "
                       f"{', '.join(per_vertex_variables(models[0]))}")
    table = pd.concat(frames, ignore_index=True)
    table.attrs["variable"] = variable
    table.attrs["roi_order"] = {"all": list(dict.fromkeys(
        name for ds in models for name in dataset_roi_order(ds)))}
    return table


def across_subjects(table: pd.DataFrame, statistic: str = "median") -> pd.DataFrame:
    """Return per model and ROI the spread over subjects of a per-subject statistic.

    Parameters
    ----------
    table : DataFrame from :func:`roi_table`
    statistic : str
        The per-subject column to summarise (``median`` or ``mean``).

    Returns
    -------
    summary : pandas.DataFrame
        Per ``model``, ``roi_class`` [, ``roi``]: ``n_subjects``, ``n_vertices`` (summed),
        ``mean`` (of the per-subject statistic), ``std`` (ddof 1; NaN for one subject),
        ``sem`` (std / sqrt(n_subjects)), ``min``, ``max``.
    """
    if statistic not in table:
        raise KeyError(f"table has no column {statistic!r}; found: {', '.join(table.columns)}")
    keys = ["model", "roi_class"] + (["roi"] if "roi" in table else [])
    grouped = table.groupby(keys, sort=False)
    out = grouped.agg(n_subjects=("subject", "nunique"), n_vertices=("n_vertices", "sum"),
                      mean=(statistic, "mean"), std=(statistic, "std"),
                      min=(statistic, "min"), max=(statistic, "max")).reset_index()
    out.insert(out.columns.get_loc("std") + 1, "sem", out["std"] / np.sqrt(out["n_subjects"]))
    out.attrs = dict(table.attrs, statistic=statistic)
    return out


def challenge_scores(results: Mapping[str, xr.Dataset] | xr.Dataset | Iterable[xr.Dataset],
                     variable: str = "noise_normalized") -> pd.Series:
    """Return per model the mean of ``variable`` over every vertex of every subject.

    With ``noise_normalized`` this is the Algonauts 2023 leaderboard number (both
    hemispheres, all subjects pooled vertex by vertex).
    """
    values: dict[str, list[np.ndarray]] = {}
    for ds in _iter_models(results):
        if variable in ds:
            values.setdefault(ds.attrs["model"], []).append(ds[variable].values)
    series = pd.Series({m: _challenge(v) for m, v in values.items()}, name=f"mean {variable}",
                       dtype=float)
    series.index.name = "model"
    return series


def _challenge(parts: list[np.ndarray]) -> float:
    try:
        return challenge_score(np.concatenate(parts))
    except ValueError:  # no vertex with a value
        return float("nan")


def leading_models(results: Mapping[str, xr.Dataset], variable: str = "noise_normalized") -> list[str]:
    """Return one entry per registry model, ordered by :func:`challenge_scores` (display only).

    A swept model appears as its headline: the point its validation part selected
    (``models/<model>/``, :mod:`neuroenc.evaluation.selection`). Its other points are
    left out, and never is the point best on the scored split chosen: that would pick a
    model by its test score. A run written before selection existed has no headline;
    its sweep is then shown by the first point, in registry order.
    """
    scores = challenge_scores(results, variable).sort_values(ascending=False)
    first = next(iter(results.values()))
    names = [str(m) for m in first[MODEL_DIM].values]

    def along_models(coord: str) -> list[str]:
        if coord in first.coords and MODEL_DIM in first[coord].dims:
            return [str(v) for v in first[coord].values]
        return [str(first.attrs.get(coord, "")) for _ in names]

    points = {m for m, p in zip(names, along_models("sweep_point")) if p not in ("", "{}", "None")}
    base = {m: (b or m) for m, b in zip(names, along_models("sweep_base"))}
    shown, seen = [], set()
    for model in names:  # registry order: a sweep without a headline keeps its first point
        key = base[model] if model in points else model
        if model in points and key in names:
            continue  # the headline stands for it
        if key not in seen:
            seen.add(key)
            shown.append(model)
    rank = {m: i for i, m in enumerate(scores.index)}
    return sorted(shown, key=lambda m: rank.get(m, len(rank)))
