"""Runs an experiment: data -> features -> model -> predictions -> scores -> results.

Folder of one run (``<output.dir>/<name>/<timestamp>/``)::

    config.yaml              the resolved registry (every default filled in)
    environment.json         versions, seed, device, platform, plugins, timings
    models/<model>/<subject>/scores.nc        per-vertex metrics (xarray, netCDF4)
    models/<model>/<subject>/predictions.nc   predictions of the scored images
    submission/<model>/<subject>/{lh,rh}_pred_test.npy   challenge submission layout
    summary.csv, summary.txt                  per model, subject and ROI

``<output.dir>/<name>/latest`` points at the newest complete run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from neuroenc.cache import atomic_path, write_json_atomic
from neuroenc.config import Registry, default_cache_dir
from neuroenc.context import RunContext, resolve_device, seed_everything
from neuroenc.data.algonauts import DatasetError, subject_id
from neuroenc.plugins import PluginManager
from neuroenc.retinotopy import visual_field_deg
from neuroenc.results import (combine_sweep, export_submission, predictions_dataset,
                              result_dataset, roi_class_summary, summarize, write_netcdf)

__all__ = ["RunResult", "run_registry", "package_versions", "format_summary"]

RECORDED_PACKAGES = ("neuroenc", "numpy", "torch", "torchvision", "timm", "open_clip_torch",
                     "transformers", "scikit-learn", "xarray", "pydantic", "pluggy", "nilearn",
                     "h5netcdf", "pillow")


@dataclass
class RunResult:
    """What a run produced: its folder, the summary table and the per-stage timings."""

    run_dir: Path
    summary: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    sweep: pd.DataFrame | None = None


def package_versions() -> dict[str, str]:
    """Return the installed versions of the packages that change results."""
    out = {"python": sys.version.split()[0]}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git_commit() -> str | None:
    """Return the commit of a neuroenc source checkout, marked '+dirty' if it has changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def _device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _new_run_dir(registry: Registry) -> Path:
    base = registry.resolve_path(registry.output.dir) / registry.name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, i = base / stamp, 1
    while run_dir.exists():
        i += 1
        run_dir = base / f"{stamp}-{i}"
    run_dir.mkdir(parents=True)
    return run_dir


def _point_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, latest)
    except OSError:  # file systems without symlinks: the timestamped folder is enough
        pass


def _subjects(registry: Registry, available: list[str]) -> list[str]:
    if registry.dataset.subjects == "all":
        if not available:
            raise DatasetError(f"dataset.subjects: 'all', but the {registry.dataset.kind} "
                               "dataset has no subjects")
        return available
    chosen = []
    for value in registry.dataset.subjects:
        sid = subject_id(value)
        if sid not in available:
            raise DatasetError(f"dataset.subjects: {value!r} ({sid}) is not in the "
                               f"{registry.dataset.kind} dataset; available: {', '.join(available)}")
        chosen.append(sid)
    return chosen


def _evaluation_split(registry: Registry, data, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Return ``(split, train_index, eval_index)`` for one subject."""
    n_train = len(data.train_images)
    mode = registry.evaluation.split
    if mode == "auto":
        mode = "test" if data.has_test_responses else "holdout"
    if mode == "test":
        if not data.has_test_responses:
            raise DatasetError(f"{data.subject}: evaluation.split is 'test' but this subject has "
                               "no test_split/test_fmri; use split: holdout (or auto)")
        return "test", np.arange(n_train), np.arange(len(data.test_images))
    rng = np.random.default_rng(seed)
    n_holdout = max(2, int(round(registry.evaluation.holdout_fraction * n_train)))
    holdout = np.sort(rng.permutation(n_train)[:n_holdout])
    train = np.setdiff1d(np.arange(n_train), holdout)
    return "holdout", train, holdout


def run_registry(registry: Registry, manager: PluginManager, *, show_progress: bool = True,
                 log=print) -> RunResult:
    """Run every model of a resolved registry on every chosen subject; return the result.

    ``registry`` must have passed :func:`neuroenc.config.resolve_registry` with ``manager``.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    device = resolve_device(registry.compute.device)
    cache_dir = (registry.resolve_path(registry.compute.cache_dir)
                 if registry.compute.cache_dir else default_cache_dir())
    context = RunContext(manager=manager, cache_dir=cache_dir, device=device, seed=registry.seed,
                         batch_size=registry.compute.batch_size,
                         num_workers=registry.compute.num_workers, show_progress=show_progress,
                         base_dir=registry.base_dir)

    run_dir = _new_run_dir(registry)
    config = registry.model_dump(mode="json")
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    environment = {
        "versions": package_versions(),
        "neuroenc_git_commit": _git_commit(),
        "seed": registry.seed,
        "device": _device_description(device),
        "platform": platform.platform(),
        "command": sys.argv,
        "registry": str(registry.source),
        "cache_dir": str(cache_dir),
        "plugins": {name: manager._versions.get(name, "") for name in manager.plugin_names()},
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    write_json_atomic(run_dir / "environment.json", environment)
    log(f"run folder: {run_dir}")

    t0 = time.perf_counter()
    reader = context.build("dataset", {"name": registry.dataset.kind, **registry.dataset.params})
    subjects = _subjects(registry, reader.subjects())
    timings["dataset"] = time.perf_counter() - t0
    metrics = {name: context.build("metric", name) for name in registry.evaluation.metrics}

    results = []
    for subject in subjects:
        t0 = time.perf_counter()
        data = reader.load(subject)
        timings[f"{subject}/load"] = time.perf_counter() - t0
        split, train_index, eval_index = _evaluation_split(registry, data, registry.seed)
        coords = data.vertex_coords()
        if split == "test":
            measured = data.responses("test")
            noise_ceiling = data.noise_ceiling() if data.has_noise_ceiling else None
            eval_images = data.test_images
            eval_ids = data.test_nsd_ids
        else:
            measured = data.responses("train")[eval_index]
            noise_ceiling = None  # NSD's noise ceiling is defined for the test images only
            eval_images = [data.train_images[i] for i in eval_index]
            eval_ids = data.train_nsd_ids[eval_index]
        log(f"{subject}: {len(train_index)} training images, {len(eval_index)} scored on the "
            f"{split} split, {measured.shape[1]} vertices ({data.fsaverage_mesh})")

        sweeps: dict[str, list[tuple[dict, object]]] = {}
        for variant in registry.variants():
            model_name = variant.name
            t0 = time.perf_counter()
            seed_everything(registry.seed)
            model = context.build("recipe", {"name": variant.recipe, **variant.params})
            model.fit(data, train_index)
            eval_split = "test" if split == "test" else "train"
            predicted = model.predict(data, eval_split, None if split == "test" else eval_index)
            if predicted.shape != measured.shape:
                raise ValueError(f"model {model_name!r} predicted shape {predicted.shape} for "
                                 f"{subject}, expected {measured.shape}")
            scores = {}
            for metric_name, metric in metrics.items():
                value = metric(measured, predicted, noise_ceiling)
                if value is not None:
                    scores[metric_name] = value
            # per-vertex maps a recipe computes itself (e.g. variance partitioning)
            for extra_name, value in (getattr(model, "extra_scores", None) or {}).items():
                if extra_name in scores:
                    raise ValueError(f"model {model_name!r}: extra score {extra_name!r} clashes "
                                     "with a metric of the same name")
                scores[extra_name] = value
            # per-vertex quantities learnt from the training data (e.g. fwrf's rf_x, rf_angle)
            vertex_maps = model.vertex_maps() if hasattr(model, "vertex_maps") else {}
            for map_name, value in vertex_maps.items():
                if map_name in scores:
                    raise ValueError(f"model {model_name!r}: vertex map {map_name!r} clashes "
                                     "with a score of the same name")
                scores[map_name] = value
            folder = run_dir / "models" / model_name / subject
            ds = result_dataset(
                model=model_name, subject=subject, vertex_coords=coords, scores=scores,
                noise_ceiling=noise_ceiling,
                attrs={"dataset": registry.dataset.kind, "split": split,
                       "n_train_images": len(train_index), "n_scored_images": len(eval_index),
                       "fsaverage_mesh": data.fsaverage_mesh, "seed": registry.seed,
                       "device": device, "model_config": {"recipe": variant.recipe, **variant.params},
                       "sweep_base": variant.base, "sweep_point": variant.point,
                       "training_history": getattr(model, "history", None) or [],
                       "vertex_map_units": getattr(model, "vertex_map_units", None) or {},
                       "visual_field_deg": visual_field_deg(data),
                       "versions": environment["versions"]})
            write_netcdf(ds, folder / "scores.nc")
            write_netcdf(predictions_dataset(
                model=model_name, subject=subject, split=split, predictions=predicted,
                vertex_coords=coords, image_names=[p.name for p in eval_images],
                nsd_ids=eval_ids), folder / "predictions.nc")
            test_predictions = predicted if split == "test" else model.predict(data, "test")
            export_submission(test_predictions, data.n_vertices,
                              run_dir / "submission" / model_name / subject)
            results.append(ds)
            if variant.point:
                sweeps.setdefault(variant.base, []).append((variant.point, ds))
            timings[f"{subject}/{model_name}"] = time.perf_counter() - t0
            log(f"{subject} {model_name}: done in {timings[f'{subject}/{model_name}']:.1f} s")
        for base, entries in sweeps.items():
            write_netcdf(combine_sweep([ds for _, ds in entries], [p for p, _ in entries], base),
                         run_dir / "models" / base / subject / "sweep.nc")

    summary = summarize(results)
    sweep_table = sweep_summary(results, summary.attrs["variable"])
    with atomic_path(run_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    if sweep_table is not None:
        with atomic_path(run_dir / "sweep_summary.csv") as tmp:
            sweep_table.to_csv(tmp)
    with atomic_path(run_dir / "summary.txt") as tmp:
        text = format_summary(summary)
        if sweep_table is not None:
            text += "\n\n" + format_sweep(sweep_table, summary.attrs["variable"])
        tmp.write_text(text + "\n")
    timings["total"] = time.perf_counter() - t_start
    environment["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    environment["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    write_json_atomic(run_dir / "environment.json", environment)
    _point_latest(run_dir)
    return RunResult(run_dir=run_dir, summary=summary, timings=timings, sweep=sweep_table)


def sweep_summary(results: list, variable: str) -> pd.DataFrame | None:
    """Return per swept model and point: the median per ROI class, averaged over subjects.

    Rows are ``(model, point)``; columns ROI classes plus ``all (mean)``, the
    challenge-style mean over all vertices. None when the run has no sweep.
    """
    rows = []
    for ds in results:
        point = json.loads(ds.attrs.get("sweep_point", "{}") or "{}")
        if not point:
            continue
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        for rec in roi_class_summary(ds, variable).to_dict("records"):
            value = rec["mean"] if rec["roi_class"] == "all" else rec["median"]
            column = "all (mean)" if rec["roi_class"] == "all" else rec["roi_class"]
            rows.append({"model": ds.attrs["sweep_base"], "point": label,
                         "subject": ds.attrs["subject"], "column": column, "value": value})
    if not rows:
        return None
    table = pd.DataFrame(rows).pivot_table(index=["model", "point"], columns="column",
                                           values="value", aggfunc="mean", sort=False)
    return table[["all (mean)"] + [c for c in table.columns if c != "all (mean)"]]


def format_sweep(table: pd.DataFrame, variable: str) -> str:
    """Return the sweep table as text."""
    return (f"sweeps: median {variable} per ROI class (mean over subjects); "
            f"'all (mean)' = challenge-style mean\n" + table.round(2).to_string())


def summary_pivot(summary: pd.DataFrame) -> pd.DataFrame:
    """Return median per ROI (rows: ROI class, ROI) for each (model, subject) column."""
    return summary.pivot_table(index=["roi_class", "roi"], columns=["model", "subject"],
                               values="median", sort=False)


def challenge_means(summary: pd.DataFrame) -> pd.Series:
    """Return per model the mean over every vertex of every subject (the challenge score)."""
    overall = summary[summary.roi_class == "all"]
    return overall.groupby("model", sort=False).apply(
        lambda g: float(np.average(g["mean"], weights=g["n_vertices"])), include_groups=False)


def format_summary(summary: pd.DataFrame) -> str:
    """Return the summary as a plain-text table: ROI rows, model/subject columns (medians).

    The last rows give, per model, the challenge-style mean over all vertices of all
    subjects (both hemispheres).
    """
    variable = summary.attrs.get("variable", "score")
    table = summary_pivot(summary)
    table.columns = [f"{m} {s}" for m, s in table.columns]
    lines = [f"median {variable} per ROI (rows) for each model and subject (columns)",
             table.round(2).to_string()]
    challenge = challenge_means(summary)
    lines.append("")
    lines.append(f"challenge-style mean {variable} over all vertices of all subjects:")
    lines.extend(f"  {model}: {value:.2f}" for model, value in challenge.items())
    return "\n".join(lines)


def read_environment(run_dir: str | Path) -> dict:
    """Return the environment record of a run folder."""
    return json.loads((Path(run_dir) / "environment.json").read_text())
