"""Runs an experiment: data -> features -> model -> predictions -> scores -> results.

Folder of one run (``<output.dir>/<name>/<timestamp>/``)::

    config.yaml              the resolved registry (every default filled in)
    environment.json         versions, seed, device, platform, plugins, timings
    models/<model>/<subject>/scores.nc        per-vertex metrics (xarray, netCDF4)
    models/<model>/<subject>/predictions.nc   predictions of the scored images
    models/<model>/<subject>/encoder/         the fitted encoder (neuroenc.core.encoders)
    encoders.json                             what was saved, per part (or why not)
    submission/<model>/<subject>/{lh,rh}_pred_test.npy   challenge submission layout
    summary.csv, summary.txt                  per model, subject and ROI
    models/<model>/<subject>/complete.json    written last for each part, then
    complete.json                             written last for the run

``<output.dir>/<name>/latest`` points at the newest complete run. A killed run keeps its
folder without ``complete.json``; :func:`neuroenc.evaluation.results.load_run` names what it lacks,
and the next run sweeps the killed run's temporary files (:mod:`neuroenc.core.run_status`).
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

from neuroenc.core.cache import atomic_path, write_json_atomic
from neuroenc.core.config import Registry, default_cache_dir
from neuroenc.core.context import RunContext, resolve_device, seed_everything
from neuroenc.core.encoders import save_part_encoder, write_encoder_manifest
from neuroenc.data.subject import DatasetError
from neuroenc.stimuli.images import require_valid_images
from neuroenc.interfaces import Prediction
from neuroenc.core.plugins import PluginManager
from neuroenc.evaluation.results import (combine_sweep, export_submission, predictions_dataset,
                              result_dataset, roi_class_summary, summarize, write_netcdf)
from neuroenc.core.run_status import mark_complete, sweep_leftovers

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
    here = Path(__file__).resolve().parents[1]  # the neuroenc package
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
    from neuroenc.core.config import RegistryError
    from neuroenc.core.names import registry_name_problems

    if problems := registry_name_problems(registry):  # a Registry not read by load_registry
        raise RegistryError(str(registry.source or "registry"), problems)
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


def _subjects(registry: Registry, reader) -> list[str]:
    available = reader.subjects()
    if registry.dataset.subjects == "all":
        if not available:
            raise DatasetError(f"dataset.subjects: 'all', but the {registry.dataset.kind} "
                               "dataset has no subjects")
        return available
    resolve = getattr(reader, "resolve_subject", str)
    chosen = []
    for value in registry.dataset.subjects:
        sid = resolve(value)
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
                               "no test responses; use split: holdout (or auto)")
        return "test", np.arange(n_train), np.arange(len(data.test_images))
    rng = np.random.default_rng(seed)
    n_holdout = max(2, int(round(registry.evaluation.holdout_fraction * n_train)))
    holdout = np.sort(rng.permutation(n_train)[:n_holdout])
    train = np.setdiff1d(np.arange(n_train), holdout)
    return "holdout", train, holdout


def run_registry(registry: Registry, manager: PluginManager, *, show_progress: bool = True,
                 log=print, resume: Path | None = None) -> RunResult:
    """Run every model of a resolved registry on every chosen subject; return the result.

    ``registry`` must have passed :func:`neuroenc.core.config.resolve_registry` with ``manager``.
    ``resume``: a run folder of this registry (killed or failed) to finish in place: its
    complete parts (checked by :func:`neuroenc.core.plan.part_problem`) are kept, the
    others are redone; the summary covers all of them.
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

    sweep_leftovers(cache_dir, registry.resolve_path(registry.output.dir) / registry.name)
    if resume is None:
        run_dir = _new_run_dir(registry)
        config = registry.model_dump(mode="json")
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        run_dir = Path(resume).resolve()
        previous = read_environment(run_dir)
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
    if resume is not None:  # the registry it was started with, and when
        environment.update(registry=previous.get("registry"), started=previous.get("started"),
                           resumed=[*previous.get("resumed", []), environment["started"]])
    write_json_atomic(run_dir / "environment.json", environment)
    log(f"{'resuming' if resume is not None else 'run folder'}: {run_dir}")

    t0 = time.perf_counter()
    reader = context.build("dataset", {"name": registry.dataset.kind, **registry.dataset.params})
    subjects = _subjects(registry, reader)
    timings["dataset"] = time.perf_counter() - t0
    environment["planned"] = {"models": [v.name for v in registry.variants()], "subjects": subjects}
    write_json_atomic(run_dir / "environment.json", environment)  # load_run names missing parts
    metrics = {name: context.build("metric", name) for name in registry.evaluation.metrics}

    results = []
    for subject in subjects:
        t0 = time.perf_counter()
        data = reader.load(subject)
        require_valid_images([*data.train_images, *data.test_images],
                             root=getattr(data, "root", None),
                             memo_dir=cache_dir / "image-checks", what=f"{subject} images")
        timings[f"{subject}/load"] = time.perf_counter() - t0
        split, train_index, eval_index = _evaluation_split(registry, data, registry.seed)
        coords = data.vertex_coords()
        if split == "test":
            measured = data.responses("test")
            noise_ceiling = data.noise_ceiling() if data.has_noise_ceiling else None
            eval_images = data.test_images
            eval_ids = data.image_ids["test"]
        else:
            measured = data.responses("train")[eval_index]
            noise_ceiling = None  # a noise ceiling is defined for the test images only
            eval_images = [data.train_images[i] for i in eval_index]
            eval_ids = data.image_ids["train"][eval_index]
        space = data.metadata.get("space") or "unknown space"
        log(f"{subject}: {len(train_index)} training images, {len(eval_index)} scored on the "
            f"{split} split, {measured.shape[1]} vertices ({space})")

        sweeps: dict[str, list[tuple[dict, object]]] = {}
        for variant in registry.variants():
            model_name = variant.name
            t0 = time.perf_counter()
            folder = run_dir / "models" / model_name / subject
            if resume is not None:
                kept = _kept_part(folder, model_name, subject, measured.shape,
                                  run_dir / "submission" / model_name / subject
                                  if data.test_images else None, registry, log)
                if kept is not None:
                    results.append(kept)
                    if variant.point:
                        sweeps.setdefault(variant.base, []).append((variant.point, kept))
                    continue
            seed_everything(registry.seed)
            model = context.build("recipe", {"name": variant.recipe, **variant.params})
            model.fit(data, train_index)
            eval_split = "test" if split == "test" else "train"
            predicted, parts = _unpack(model.predict(data, eval_split,
                                                     None if split == "test" else eval_index))
            for part_name, values in {"prediction": predicted, **parts}.items():
                if values.shape != measured.shape:
                    raise ValueError(f"model {model_name!r} predicted shape {values.shape} "
                                     f"({part_name}) for {subject}, expected {measured.shape}")
            scores = _score(model_name, model, metrics, measured, predicted, parts, noise_ceiling)
            ds = result_dataset(
                model=model_name, subject=subject, vertex_coords=coords, scores=scores,
                noise_ceiling=noise_ceiling,
                attrs={"dataset": registry.dataset.kind, "split": split,
                       "n_train_images": len(train_index), "n_scored_images": len(eval_index),
                       **data.result_attrs(), "seed": registry.seed,
                       "device": device, "model_config": {"recipe": variant.recipe, **variant.params},
                       "sweep_base": variant.base, "sweep_point": variant.point,
                       "training_history": getattr(model, "history", None) or [],
                       "vertex_map_units": getattr(model, "vertex_map_units", None) or {},
                       "versions": environment["versions"]})
            write_netcdf(ds, folder / "scores.nc")
            write_netcdf(predictions_dataset(
                model=model_name, subject=subject, split=split, predictions=predicted,
                vertex_coords=coords, image_names=[p.name for p in eval_images],
                image_ids=eval_ids), folder / "predictions.nc")
            if split == "test":
                test_predictions = predicted
            elif data.test_images:
                test_predictions = _unpack(model.predict(data, "test"))[0]
            else:
                test_predictions = None
            if test_predictions is not None:
                export_submission(test_predictions, data.unit_blocks(),
                                  run_dir / "submission" / model_name / subject)
            if registry.output.save_encoders:
                save_part_encoder(model, folder, model_name=model_name, subject=subject,
                                  recipe=variant.recipe, params=variant.params, vertex_coords=coords,
                                  attrs=data.result_attrs(), seed=registry.seed,
                                  dtype=registry.output.encoder_dtype)
            mark_complete(folder)  # last: a folder without it is a killed or failed part
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
    if registry.output.save_encoders:
        write_encoder_manifest(run_dir, [(v.name, s) for s in subjects for v in registry.variants()])
    mark_complete(run_dir)
    _point_latest(run_dir)
    return RunResult(run_dir=run_dir, summary=summary, timings=timings, sweep=sweep_table)


def _kept_part(folder: Path, model: str, subject: str, shape: tuple[int, int],
               submission: Path | None, registry: Registry, log):
    """Return a resumed run's finished part (its scores), or None after clearing it to redo."""
    import shutil

    from neuroenc.core.plan import part_problem
    from neuroenc.evaluation.results import read_netcdf

    problem = part_problem(folder, model=model, subject=subject, n_vertices=shape[1],
                           n_scored=shape[0], submission=submission,
                           save_encoders=registry.output.save_encoders)
    if problem is None:
        log(f"{subject} {model}: kept (complete)")
        return read_netcdf(folder / "scores.nc")
    if folder.exists():
        log(f"{subject} {model}: redone ({problem})")
        shutil.rmtree(folder)
    if submission is not None and submission.exists():
        shutil.rmtree(submission)
    return None


def _unpack(output) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Return ``(predictions, parts)`` from a recipe's ``predict`` (array or Prediction)."""
    if isinstance(output, Prediction):
        return (np.asarray(output.responses, dtype=np.float32),
                {k: np.asarray(v, dtype=np.float32) for k, v in output.parts.items()})
    return np.asarray(output, dtype=np.float32), {}


def _score(model_name: str, model, metrics: dict, measured: np.ndarray, predicted: np.ndarray,
           parts: dict[str, np.ndarray], noise_ceiling) -> dict[str, np.ndarray]:
    """Return every per-vertex variable of one result: metrics of the prediction and of
    its parts (``<metric>_<part>``), the recipe's derived scores and its vertex maps."""
    scores: dict[str, np.ndarray] = {}
    for metric_name, metric in metrics.items():
        for part_name, values in {"": predicted, **parts}.items():
            value = metric(measured, values, noise_ceiling)
            if value is not None:
                scores[f"{metric_name}_{part_name}" if part_name else metric_name] = value
    extras = {}
    if hasattr(model, "derived_scores"):
        extras.update(model.derived_scores(dict(scores)) or {})
    if hasattr(model, "vertex_maps"):
        extras.update(model.vertex_maps() or {})
    for extra_name, value in extras.items():
        if extra_name in scores:
            raise ValueError(f"model {model_name!r}: per-vertex map {extra_name!r} clashes "
                             "with a metric of the same name")
        scores[extra_name] = np.asarray(value, dtype=np.float32)
    return scores


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
    """Return per model the mean over every vertex of every subject (the challenge score).

    As :func:`neuroenc.evaluation.analysis.challenge_scores` computed it for :func:`summarize`.
    """
    return pd.Series(summary.attrs["challenge"], dtype=float)


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
