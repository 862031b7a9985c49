"""Results as xarray Datasets labelled by vertex and ROI; netCDF files; summaries.

One Dataset per model and subject, with dimension ``vertex`` (lh then rh challenge-space
vertices) and coordinates ``hemisphere``, ``challenge_index``, ``fsaverage_index`` and one
``roi_<class>`` per ROI class (the ROI name, ``""`` outside the class). Data variables are
the metrics (``pearson``, ``r2``, ``noise_normalized`` ...) and ``noise_ceiling``. Attributes
carry model, subject, split and, as JSON strings (netCDF attributes must be scalars),
the model's config and the package versions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from neuroenc.core.cache import atomic_path
from neuroenc.core.oserrors import needs_space
from neuroenc.data.subject import ROI_PREFIX
from neuroenc.evaluation.metrics import challenge_score

__all__ = [
    "ROI_PREFIX",
    "result_dataset",
    "predictions_dataset",
    "write_netcdf",
    "read_netcdf",
    "export_submission",
    "roi_coords",
    "roi_groups",
    "roi_summary",
    "roi_class_summary",
    "summarize",
    "combine_sweep",
    "load_run",
]

NETCDF_ENGINE = "h5netcdf"


def _vertex_coords(vertex_coords: Mapping[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    n = {len(v) for v in vertex_coords.values()}
    if len(n) != 1:
        raise ValueError(f"vertex coordinates have different lengths: "
                         f"{ {k: len(v) for k, v in vertex_coords.items()} }")
    return {name: ("vertex", np.asarray(values)) for name, values in vertex_coords.items()}


def result_dataset(*, model: str, subject: str, vertex_coords: Mapping[str, np.ndarray],
                   scores: Mapping[str, np.ndarray], noise_ceiling: np.ndarray | None,
                   attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Return one model's per-vertex scores on one subject as an xarray Dataset.

    Parameters
    ----------
    model, subject : str
    vertex_coords : mapping of str to ndarray of shape (n_vertices,)
        As :meth:`neuroenc.data.subject.SubjectData.vertex_coords` returns them.
    scores : mapping of str to ndarray of shape (n_vertices,)
        One entry per metric.
    noise_ceiling : ndarray of shape (n_vertices,) or None
    attrs : mapping
        Extra attributes; dicts and lists are stored as JSON strings.
    """
    coords = _vertex_coords(vertex_coords)
    n_vertices = len(next(iter(coords.values()))[1])
    data_vars = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (n_vertices,):
            raise ValueError(f"metric {name!r} has shape {values.shape}, expected ({n_vertices},)")
        data_vars[name] = ("vertex", values)
    if noise_ceiling is not None:
        data_vars["noise_ceiling"] = ("vertex", np.asarray(noise_ceiling, dtype=np.float32))
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {"model": model, "subject": subject, **_json_attrs(attrs or {})}
    return ds


def predictions_dataset(*, model: str, subject: str, split: str, predictions: np.ndarray,
                        vertex_coords: Mapping[str, np.ndarray], image_names: Sequence[str],
                        image_ids: np.ndarray) -> xr.Dataset:
    """Return predictions of shape (n_images, n_vertices) as a Dataset with image labels.

    Coordinates along ``image``: the file name and ``image_id`` (the dataset's stimulus
    id: the NSD id for Algonauts data, the file stem for a ``folder`` dataset).
    """
    coords = _vertex_coords(vertex_coords)
    ids = np.asarray(image_ids)
    coords.update(image=("image", np.asarray(image_names, dtype=str)),
                  image_id=("image", ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)))
    return xr.Dataset({"predicted": (("image", "vertex"), np.asarray(predictions, np.float32))},
                      coords=coords, attrs={"model": model, "subject": subject, "split": split})


def _json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (dict, list, tuple)):
            out[key] = json.dumps(value, sort_keys=True, default=str)
        elif value is None:
            out[key] = ""
        elif isinstance(value, (str, int, float, np.integer, np.floating)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def write_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``path`` as netCDF4 (h5netcdf), atomically; return the path."""
    path = Path(path)
    # Built in memory, then written with plain file writes: a full disk or a read-only
    # folder is then an OSError naming the file, never an HDF5 library error on a
    # half-written file that is still open (which crashed the interpreter at exit).
    data = ds.to_netcdf(engine=NETCDF_ENGINE)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise needs_space(exc, len(data), path)
    return path


def read_netcdf(path: str | Path) -> xr.Dataset:
    """Return a Dataset read fully into memory (the file is closed afterwards)."""
    with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
        return ds.load()


def export_submission(predictions: np.ndarray, n_vertices: Mapping[str, int], folder: str | Path) -> list[Path]:
    """Write one ``<group>_pred_test.npy`` per unit group; return the paths.

    For surface data the groups are the hemispheres, which is the Algonauts 2023
    challenge's submission layout (``{lh,rh}_pred_test.npy``); other data is one group
    (``all_pred_test.npy``). Groups as :meth:`neuroenc.data.subject.SubjectData.unit_blocks`.

    Parameters
    ----------
    predictions : ndarray of shape (n_test_images, n_vertices)
    n_vertices : mapping ``{group: n_units}`` in column order, e.g. ``{'lh': n_lh, 'rh': n_rh}``
    folder : the subject's folder, e.g. ``.../submission/subj01``
    """
    folder = Path(folder)
    expected = sum(n_vertices.values())
    if predictions.shape[1] != expected:
        raise ValueError(f"predictions have {predictions.shape[1]} vertices, expected "
                         f"{expected} ({dict(n_vertices)})")
    written, start = [], 0
    for hemi, n in n_vertices.items():
        path = folder / f"{hemi}_pred_test.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # np.save on a path would append '.npy'
                np.save(fh, np.ascontiguousarray(predictions[:, start:start + n], dtype=np.float32))
        written.append(path)
        start += n
    return written


def roi_coords(ds: xr.Dataset) -> dict[str, str]:
    """Return ``{coordinate name: ROI class}`` for the ROI coordinates of a result."""
    classes = json.loads(ds.attrs.get("roi_classes", "{}")) if "roi_classes" in ds.attrs else {}
    return {name: classes.get(name, name[len(ROI_PREFIX):].replace("_", "-"))
            for name in ds.coords if str(name).startswith(ROI_PREFIX)}


def roi_groups(ds: xr.Dataset, level: str = "roi"):
    """Yield ``(roi_class, roi, mask)`` for every vertex, ROI class and ROI of a result.

    The first group is ``("all", "all vertices", every vertex)``; then per ROI class
    either each ROI (``level="roi"``, in the dataset's ROI order where the result
    records it, else first seen) or the class's ROIs pooled (``level="roi_class"``, roi
    ``None``). Masks are boolean arrays of shape (n_vertices,).
    """
    if level not in ("roi", "roi_class"):
        raise ValueError(f"level must be 'roi' or 'roi_class', found {level!r}")
    yield "all", "all vertices", np.ones(ds.sizes["vertex"], dtype=bool)
    for coord, roi_class in roi_coords(ds).items():
        labels = ds[coord].values.astype(str)
        if level == "roi_class":
            inside = ~np.isin(labels, ("", "Unknown"))
            if inside.any():
                yield roi_class, None, inside
            continue
        for roi in dict.fromkeys(labels):  # keeps first-seen order
            if roi not in ("", "Unknown"):
                yield roi_class, roi, labels == roi


def _stats(values: np.ndarray) -> dict[str, float]:
    # One NaN policy for every summary: NaN is a vertex without a value (a model that
    # lacks a variable after stacking), left out; the mean is the challenge's statistic.
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n_vertices": 0, "median": float("nan"), "mean": float("nan")}
    return {"n_vertices": int(finite.size), "median": float(np.median(finite)),
            "mean": challenge_score(finite)}


def roi_summary(ds: xr.Dataset, variable: str, level: str = "roi") -> pd.DataFrame:
    """Return per ROI (or ROI class) and over all vertices: count, median and mean.

    Columns: ``roi_class``, [``roi``], ``n_vertices`` (vertices with a value),
    ``median``, ``mean``. The row with ``roi_class == 'all'`` covers every vertex; its
    ``mean`` is the challenge-style score (:func:`neuroenc.evaluation.metrics.challenge_score`).
    ``level="roi_class"`` pools each class's ROIs (no ``roi`` column).
    """
    values = ds[variable].values
    rows = []
    for roi_class, roi, mask in roi_groups(ds, level):
        row = {"roi_class": roi_class} if level == "roi_class" else {"roi_class": roi_class, "roi": roi}
        rows.append({**row, **_stats(values[mask])})
    return pd.DataFrame(rows)


def roi_class_summary(ds: xr.Dataset, variable: str) -> pd.DataFrame:
    """Return per ROI class (all its ROIs pooled) and over all vertices: count, median, mean.

    :func:`roi_summary` with ``level="roi_class"``.
    """
    return roi_summary(ds, variable, level="roi_class")


def combine_sweep(results: Sequence[xr.Dataset], points: Sequence[Mapping[str, Any]],
                  model: str) -> xr.Dataset:
    """Return one subject's sweep results stacked along a named dimension.

    With one swept parameter the dimension is named after it (dots become underscores,
    ``alignment.weight`` -> ``alignment_weight``) with the values as coordinate; with
    several it is ``sweep_point`` with one coordinate per parameter.
    """
    if len(results) != len(points) or not results:
        raise ValueError(f"{len(results)} results for {len(points)} sweep points")
    keys = list(points[0])
    names = {k: k.replace(".", "_") for k in keys}
    dim = names[keys[0]] if len(keys) == 1 else "sweep_point"
    shared = [v for v in ("noise_ceiling",) if v in results[0]]
    stacked = xr.concat([r.drop_vars(shared) for r in results], dim=dim,
                        combine_attrs="drop_conflicts")
    for key in keys:
        values = [p[key] for p in points]
        if any(isinstance(v, (list, dict)) for v in values):  # e.g. alphas: [1.0, 10.0]
            values = [json.dumps(v) for v in values]
        stacked = stacked.assign_coords({names[key]: (dim, values)})
    for var in shared:
        stacked[var] = results[0][var]
    stacked.attrs.update(model=model, sweep_parameters=json.dumps(keys))
    return stacked


def summarize(results: Iterable[xr.Dataset], variable: str | None = None) -> pd.DataFrame:
    """Return a long table of ROI summaries for many results (model, subject, ROI).

    ``variable`` defaults to ``noise_normalized`` where every result has it, else ``pearson``.
    """
    results = list(results)
    if variable is None:
        variable = "noise_normalized" if all("noise_normalized" in r for r in results) else "pearson"
    frames = []
    for ds in results:
        frame = roi_summary(ds, variable)
        frame.insert(0, "subject", ds.attrs["subject"])
        frame.insert(0, "model", ds.attrs["model"])
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs["variable"] = variable
    from neuroenc.evaluation.analysis import challenge_scores  # analysis builds on this module

    table.attrs["challenge"] = challenge_scores(results, variable).to_dict()
    return table


def load_run(run_dir: str | Path, *,
             allow_incomplete: bool = False) -> dict[tuple[str, str], xr.Dataset]:
    """Return ``{(model, subject): scores Dataset}`` for every result of a run folder.

    Raises
    ------
    neuroenc.core.run_status.IncompleteRunError
        The run was killed, failed or is still running (it has no completion marker);
        the message names the missing parts. With ``allow_incomplete=True`` a warning
        names them instead and the finished parts are returned.
    """
    from neuroenc.core.run_status import IncompleteRunError, run_status

    run_dir = Path(run_dir)
    status = run_status(run_dir)
    if not status.finished or status.missing:
        if not allow_incomplete:
            raise IncompleteRunError(status)
        warnings.warn(str(IncompleteRunError(status)).split(". Rerun")[0] + "; loading the "
                      "finished parts only", RuntimeWarning, stacklevel=2)
    found = {}
    for model, subject in status.complete:
        path = run_dir / "models" / model / subject / "scores.nc"
        if not path.is_file():
            continue
        ds = read_netcdf(path)
        found[ds.attrs["model"], ds.attrs["subject"]] = ds
    if not found:
        raise FileNotFoundError(f"{run_dir}: no results (expected models/<model>/<subject>/scores.nc)")
    return found
