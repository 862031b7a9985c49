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
from neuroenc.core.config import SEED_KEY, Registry, default_cache_dir
from neuroenc.core.context import ModelSpec, RunContext, resolve_device, seed_everything
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


def _run_context(registry: Registry, manager: PluginManager, show_progress: bool) -> RunContext:
    device = resolve_device(registry.compute.device)
    cache_dir = (registry.resolve_path(registry.compute.cache_dir)
                 if registry.compute.cache_dir else default_cache_dir())
    return RunContext(manager=manager, cache_dir=cache_dir, device=device, seed=registry.seed,
                      batch_size=registry.compute.batch_size,
                      num_workers=registry.compute.num_workers, show_progress=show_progress,
                      base_dir=registry.base_dir)


def run_registry(registry: Registry, manager: PluginManager, *, show_progress: bool = True,
                 log=print, resume: Path | None = None, executor=None) -> RunResult:
    """Run every model of a resolved registry on every chosen subject; return the result.

    ``registry`` must have passed :func:`neuroenc.core.config.resolve_registry` with ``manager``.
    ``resume``: a run folder of this registry (killed or failed) to finish in place: its
    complete parts (checked by :func:`neuroenc.core.plan.part_problem`) are kept, the
    others are redone; the summary covers all of them.
    ``executor`` (:mod:`neuroenc.core.executors`; None: every part in this process): runs
    the grid of parts (subject x model or sweep point, less the models that combine
    others) elsewhere first; this process then selects, combines and summarises.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    context = _run_context(registry, manager, show_progress)
    device, cache_dir = context.device, context.cache_dir

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
    environment["planned"] = {"models": part_names(registry), "subjects": subjects}
    write_json_atomic(run_dir / "environment.json", environment)  # load_run names missing parts
    metrics = {name: context.build("metric", name) for name in registry.evaluation.metrics}

    state = _RunState(registry=registry, context=context, metrics=metrics, run_dir=run_dir,
                      device=device, versions=environment["versions"], resume=resume, log=log,
                      timings=timings)
    if executor is not None:
        from neuroenc.core.executors import PartTask

        tasks = [PartTask(str(run_dir), subject, v.name, strict=manager.strict,
                          blocked=tuple(manager.blocked), quiet=executor.name == "local")
                 for subject in subjects for v in registry.variants()
                 if not combines_models(manager, v)]
        t0 = time.perf_counter()
        for done in executor.run(tasks, run_dir, log=log):
            timings.update(done["timings"])
        timings[f"{executor.name} tasks"] = time.perf_counter() - t0
        state.resume = run_dir  # every part is written: below, keep them, select and combine
    results, points = [], []
    for subject in subjects:
        subject_results, subject_points = run_subject(state, reader, subject)
        results.extend(subject_results)
        points.extend(subject_points)

    summary = summarize(results)
    sweep_table = sweep_summary(points, summary.attrs["variable"], results)
    with atomic_path(run_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    if sweep_table is not None:
        with atomic_path(run_dir / "sweep_summary.csv") as tmp:
            sweep_table.to_csv(tmp)
    with atomic_path(run_dir / "summary.txt") as tmp:
        text = format_summary(summary) + format_selected(results)
        if sweep_table is not None:
            text += "\n\n" + format_sweep(sweep_table, summary.attrs["variable"])
        tmp.write_text(text + "\n")
    timings["total"] = time.perf_counter() - t_start
    environment["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    environment["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    write_json_atomic(run_dir / "environment.json", environment)
    if registry.output.save_encoders:
        write_encoder_manifest(run_dir, [(name, s) for s in subjects for name in part_names(registry)])
    mark_complete(run_dir)
    _point_latest(run_dir)
    return RunResult(run_dir=run_dir, summary=summary, timings=timings, sweep=sweep_table)


def run_one_part(run_dir: Path, subject: str, model: str, *, strict: bool = False,
                 blocked: tuple[str, ...] = (), log=print) -> dict[str, float]:
    """Fit, score and write one part of a run folder (an executor's task); return timings.

    The registry is the run's own (``config.yaml``, as for ``--resume``); a complete part
    is kept, any other redone. Only parts that do not combine other models are tasks.
    """
    from neuroenc.core.config import resolve_registry
    from neuroenc.core.plan import registry_of_run

    manager = PluginManager(strict=strict, blocked=blocked)
    registry = resolve_registry(registry_of_run(run_dir), manager)
    context = _run_context(registry, manager, show_progress=False)
    variant = next((v for v in registry.variants() if v.name == model), None)
    if variant is None:
        raise ValueError(f"{run_dir}/config.yaml: no model or sweep point {model!r}")
    reader = context.build("dataset", {"name": registry.dataset.kind, **registry.dataset.params})
    timings: dict[str, float] = {}
    state = _RunState(registry=registry, context=context,
                      metrics={n: context.build("metric", n) for n in registry.evaluation.metrics},
                      run_dir=Path(run_dir), device=context.device, versions=package_versions(),
                      resume=Path(run_dir), log=log, timings=timings)
    t0 = time.perf_counter()
    data = reader.load(subject)
    timings[f"{subject}/load"] = time.perf_counter() - t0
    run_part(state, plan_subject(registry, data), variant)
    return timings


def part_names(registry: Registry) -> list[str]:
    """Return every result folder a run writes per subject: each model or sweep point,
    and after a swept model's points its headline (the point selected on validation)."""
    from neuroenc.core.config import expand_model

    names: list[str] = []
    for name, model in registry.models.items():
        variants = expand_model(name, model, registry.seed)
        names.extend(v.name for v in variants)
        if variants[0].point:
            names.append(name)
    return names


@dataclass
class _RunState:
    """What every part of one run shares."""

    registry: Registry
    context: RunContext
    metrics: dict
    run_dir: Path
    device: str
    versions: dict
    resume: Path | None
    log: object
    timings: dict


@dataclass
class SubjectPlan:
    """One subject's data and index sets: the training images, the validation part inside
    them (swept models fit on the rest), and the scored images."""

    subject: str
    data: object
    split: str
    train_index: np.ndarray
    eval_index: np.ndarray
    fit_index: np.ndarray        # train_index less the validation part
    validation_index: np.ndarray
    measured: np.ndarray
    noise_ceiling: np.ndarray | None
    eval_images: list
    eval_ids: np.ndarray
    coords: dict

    @property
    def refit_submission(self) -> bool:
        return self.split == "holdout" and bool(self.data.test_images)


def plan_subject(registry: Registry, data) -> SubjectPlan:
    """Return the index sets of one loaded subject (the same for every model)."""
    from neuroenc.evaluation.selection import validation_split

    split, train_index, eval_index = _evaluation_split(registry, data, registry.seed)
    if split == "test":
        measured = data.responses("test")
        noise_ceiling = data.noise_ceiling() if data.has_noise_ceiling else None
        eval_images, eval_ids = data.test_images, data.image_ids["test"]
    else:
        measured = data.responses("train")[eval_index]
        noise_ceiling = None  # a noise ceiling is defined for the test images only
        eval_images = [data.train_images[i] for i in eval_index]
        eval_ids = data.image_ids["train"][eval_index]
    if any(v.point for v in registry.variants()) or any(
            "members" in v.params for v in registry.variants()):
        fit_index, validation_index = validation_split(train_index, registry.selection.fraction,
                                                       registry.seed)
    else:
        fit_index, validation_index = train_index, np.arange(0)
    return SubjectPlan(data.subject, data, split, train_index, eval_index, fit_index,
                       validation_index, measured, noise_ceiling, eval_images, eval_ids,
                       data.vertex_coords())


def run_subject(state: _RunState, reader, subject: str) -> tuple[list, list]:
    """Fit, score and write every model of one subject; return ``(headline results,
    sweep-point results)``. A swept model's headline is its point selected on validation."""
    registry, log = state.registry, state.log
    t0 = time.perf_counter()
    data = reader.load(subject)
    require_valid_images([*data.train_images, *data.test_images],
                         root=getattr(data, "root", None),
                         memo_dir=state.context.cache_dir / "image-checks",
                         what=f"{subject} images")
    state.timings[f"{subject}/load"] = time.perf_counter() - t0
    plan = plan_subject(registry, data)
    space = data.metadata.get("space") or "unknown space"
    log(f"{subject}: {len(plan.train_index)} training images, {len(plan.eval_index)} scored on "
        f"the {plan.split} split, {plan.measured.shape[1]} vertices ({space})")
    if len(plan.validation_index):
        log(f"{subject}: sweep points fit on {len(plan.fit_index)} images and are compared on "
            f"{len(plan.validation_index)} validation images ({registry.selection.metric})")

    headlines, points = [], []
    sweeps: dict[str, list] = {}
    specs: dict[str, ModelSpec] = {}  # each model as an ensemble may rebuild it
    combining = [v for v in registry.variants() if combines_models(state.context.manager, v)]
    for variant in registry.variants():
        if variant in combining:
            continue
        ds = run_part(state, plan, variant)
        if variant.point:
            points.append(ds)
            sweeps.setdefault(variant.base, []).append((variant, ds))
        else:
            headlines.append(ds)
            specs[variant.name] = _spec(registry, variant)
    for base, entries in sweeps.items():
        write_netcdf(combine_sweep([ds for _, ds in entries], [v.point for v, _ in entries], base),
                     state.run_dir / "models" / base / subject / "sweep.nc")
        ds, chosen = select_headline(state, plan, base, entries)
        headlines.append(ds)
        specs[base] = _spec(registry, chosen)
    for variant in combining:  # after every other model: they combine the selected ones
        headlines.append(run_part(state, plan, variant, models=specs))
    return headlines, points


def combines_models(manager, variant) -> bool:
    """Whether a variant's recipe combines other models of the run (has ``members``)."""
    return "members" in manager.get("recipe", variant.recipe).params.model_fields


def _spec(registry: Registry, variant) -> ModelSpec:
    return ModelSpec(variant.recipe, variant.params,
                     registry.seed if variant.seed is None else variant.seed)


def run_part(state: _RunState, plan: SubjectPlan, variant,
             models: dict | None = None) -> "xr.Dataset":
    """Fit one model (or sweep point) on one subject, score it, write its part folder.

    A sweep point is fitted on the training images less the validation part and records
    its validation score (``attrs['validation_score']``); a model combining others
    (``models``: the run's models, for an ensemble) gets the validation part to fit its
    weights on; any other model is fitted on all training images.
    """
    registry, log, subject = state.registry, state.log, plan.subject
    model_name = variant.name
    t0 = time.perf_counter()
    folder = state.run_dir / "models" / model_name / subject
    submission = state.run_dir / "submission" / model_name / subject
    if state.resume is not None:
        kept = _kept_part(folder, model_name, subject, plan.measured.shape,
                          submission if plan.data.test_images else None, registry, log)
        if kept is not None:
            return kept
    swept = bool(variant.point)
    held_out = swept or models is not None
    fit_index = plan.fit_index if held_out else plan.train_index
    model = _fit(state, plan, variant, fit_index, plan.validation_index if held_out else None,
                 models)
    extra_attrs = {}
    if swept:
        from neuroenc.evaluation.selection import selection_score

        predicted_val = _unpack(model.predict(plan.data, "train", plan.validation_index))[0]
        measured_val = np.asarray(plan.data.responses("train")[plan.validation_index], np.float32)
        extra_attrs = {"validation_score": selection_score(measured_val, predicted_val,
                                                           registry.selection.metric),
                       "validation_metric": registry.selection.metric,
                       "n_validation_images": len(plan.validation_index)}
    eval_split = "test" if plan.split == "test" else "train"
    predicted, parts = _unpack(model.predict(plan.data, eval_split,
                                             None if plan.split == "test" else plan.eval_index))
    for part_name, values in {"prediction": predicted, **parts}.items():
        if values.shape != plan.measured.shape:
            raise ValueError(f"model {model_name!r} predicted shape {values.shape} "
                             f"({part_name}) for {subject}, expected {plan.measured.shape}")
    scores = _score(model_name, model, state.metrics, plan.measured, predicted, parts,
                    plan.noise_ceiling)
    seed = registry.seed if variant.seed is None else variant.seed
    ds = result_dataset(
        model=model_name, subject=subject, vertex_coords=plan.coords, scores=scores,
        noise_ceiling=plan.noise_ceiling,
        attrs={"dataset": registry.dataset.kind, "split": plan.split,
               "n_train_images": len(fit_index), "n_scored_images": len(plan.eval_index),
               **plan.data.result_attrs(), "seed": seed, "device": state.device,
               "model_config": {"recipe": variant.recipe, **variant.params},
               "sweep_base": variant.base, "sweep_point": variant.point, **extra_attrs,
               "training_history": getattr(model, "history", None) or [],
               "vertex_map_units": getattr(model, "vertex_map_units", None) or {},
               "versions": state.versions})
    write_netcdf(ds, folder / "scores.nc")
    write_netcdf(predictions_dataset(
        model=model_name, subject=subject, split=plan.split, predictions=predicted,
        vertex_coords=plan.coords, image_names=[p.name for p in plan.eval_images],
        image_ids=plan.eval_ids), folder / "predictions.nc")
    if plan.split == "test":
        export_submission(predicted, plan.data.unit_blocks(), submission)
    elif plan.data.test_images and not (_refits(registry, plan) and not swept):
        # a sweep point's own submission; a headline model refits on all training images
        export_submission(_unpack(model.predict(plan.data, "test"))[0], plan.data.unit_blocks(),
                          submission)
    if registry.output.save_encoders:
        save_part_encoder(model, folder, model_name=model_name, subject=subject,
                          recipe=variant.recipe, params=variant.params, vertex_coords=plan.coords,
                          attrs=plan.data.result_attrs(), seed=seed,
                          dtype=registry.output.encoder_dtype)
    if not swept and _refits(registry, plan):
        _refit_submission(state, plan, variant, submission, models)
    mark_complete(folder)  # last: a folder without it is a killed or failed part
    state.timings[f"{subject}/{model_name}"] = time.perf_counter() - t0
    log(f"{subject} {model_name}: done in {state.timings[f'{subject}/{model_name}']:.1f} s")
    return ds


def _fit(state: _RunState, plan: SubjectPlan, variant, fit_index: np.ndarray,
         validation_index: np.ndarray | None, models: dict | None = None):
    """Return the variant's recipe fitted on ``fit_index`` (with the variant's seed).

    A recipe whose ``fit`` takes ``validation_index`` gets the validation part, e.g. for
    early stopping on the same images the sweep is compared on.
    """
    import dataclasses
    import inspect

    seed = state.registry.seed if variant.seed is None else variant.seed
    context = dataclasses.replace(state.context, seed=seed, models=dict(models or {}))
    seed_everything(seed)
    model = context.build("recipe", {"name": variant.recipe, **variant.params})
    if validation_index is not None and "validation_index" in inspect.signature(model.fit).parameters:
        model.fit(plan.data, fit_index, validation_index=validation_index)
    else:
        model.fit(plan.data, fit_index)
    return model


def _refits(registry: Registry, plan: SubjectPlan) -> bool:
    refit = registry.selection.refit
    return plan.refit_submission if refit == "auto" else bool(refit and plan.data.test_images)


def _refit_submission(state: _RunState, plan: SubjectPlan, variant, submission: Path,
                      models: dict | None = None) -> None:
    """Export the challenge submission of ``variant`` refitted on every training image."""
    every = np.arange(len(plan.data.train_images))
    state.log(f"{plan.subject} {variant.base}: refit on all {len(every)} training images for "
              "the submission")
    model = _fit(state, plan, variant, every, None, models)
    export_submission(_unpack(model.predict(plan.data, "test"))[0], plan.data.unit_blocks(),
                      submission)


def select_headline(state: _RunState, plan: SubjectPlan, base: str, entries: list) -> tuple:
    """Choose a swept model's point on validation; write it as the model's headline part.

    The headline folder ``models/<base>/<subject>/`` holds the chosen point's results
    (its first seed), ``selection.json`` (every point's validation score), and, where
    :func:`_refits`, a submission from the chosen settings refitted on all training images.
    Returns ``(headline Dataset, chosen variant)``.
    """
    import shutil

    from neuroenc.evaluation.results import read_netcdf
    from neuroenc.evaluation.selection import SELECTION_FILE, select_point

    registry, subject = state.registry, plan.subject
    selection = select_point(base, subject, registry.selection.metric, len(plan.validation_index),
                             [(v.choice, v.seed, float(ds.attrs.get("validation_score", np.nan)))
                              for v, ds in entries])
    chosen_variant, chosen = next((v, ds) for v, ds in entries if v.choice == selection.chosen)
    folder = state.run_dir / "models" / base / subject
    point_folder = state.run_dir / "models" / chosen_variant.name / subject
    for stale in ("scores.nc", "predictions.nc", "encoder", "encoder.status.json", "complete.json"):
        target = folder / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    with atomic_path(folder / SELECTION_FILE) as tmp:
        tmp.write_text(selection.to_json() + "\n")
    label = ", ".join(f"{k}={v}" for k, v in selection.chosen.items()) or "(one point)"
    ds = chosen.copy()
    ds.attrs.update(model=base, sweep_point="{}", selected_point=json.dumps(chosen_variant.point),
                    selection=selection.to_json())
    write_netcdf(ds, folder / "scores.nc")
    predictions = read_netcdf(point_folder / "predictions.nc")
    predictions.attrs["model"] = base
    write_netcdf(predictions, folder / "predictions.nc")
    if (point_folder / "encoder.status.json").is_file():
        _copy_encoder(point_folder, folder, base)
    submission = state.run_dir / "submission" / base / subject
    if _refits(registry, plan):
        _refit_submission(state, plan, chosen_variant, submission)
    elif (state.run_dir / "submission" / chosen_variant.name / subject).is_dir():
        if submission.exists():
            shutil.rmtree(submission)
        shutil.copytree(state.run_dir / "submission" / chosen_variant.name / subject, submission)
    mark_complete(folder)
    state.log(f"{subject} {base}: selected {label} on {len(plan.validation_index)} validation "
              f"images ({registry.selection.metric} "
              f"{next(p['mean'] for p in selection.points if p['chosen']):.4f})")
    return ds, chosen_variant


def _copy_encoder(source: Path, target: Path, model: str) -> None:
    """Copy a sweep point's saved encoder (and its status) into the headline folder."""
    import shutil

    status = json.loads((source / "encoder.status.json").read_text())
    if (source / "encoder").is_dir():
        staging = target / ".encoder.partial"
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(source / "encoder", staging)
        record_path = staging / "encoder.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            record["model"] = model
            write_json_atomic(record_path, record)
        os.replace(staging, target / "encoder")
    status["model"] = model
    if status.get("path"):
        status["path"] = (target / "encoder").relative_to(target.parents[2]).as_posix()
    write_json_atomic(target / "encoder.status.json", status)


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
    prediction = Prediction.of(output)
    return prediction.responses, dict(prediction.parts)


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


def sweep_summary(points: list, variable: str, headlines: list = ()) -> pd.DataFrame | None:
    """Return per swept model and point: the median per ROI class, averaged over subjects,
    then mean (and sd) over seeds; the validation score; the subjects that selected it.

    Rows are ``(model, point)`` (the point without its seed); columns ``all (mean)`` (the
    challenge-style mean), the ROI classes, ``validation <metric>``, ``n_seeds``, ``<col>
    sd`` where there are several seeds, and ``selected`` (the subjects whose validation
    chose the point). None when the run has no sweep. Scores are on the scored split.
    """
    rows = []
    for ds in points:
        point = json.loads(ds.attrs.get("sweep_point", "{}") or "{}")
        if not point:
            continue
        label = _point_label(point)
        key = {"model": ds.attrs["sweep_base"], "point": label, "subject": ds.attrs["subject"],
               "seed": point.get(SEED_KEY, ds.attrs.get("seed", 0))}
        for rec in roi_class_summary(ds, variable).to_dict("records"):
            value = rec["mean"] if rec["roi_class"] == "all" else rec["median"]
            column = "all (mean)" if rec["roi_class"] == "all" else rec["roi_class"]
            rows.append({**key, "column": column, "value": value})
        if "validation_score" in ds.attrs:
            rows.append({**key, "column": f"validation {ds.attrs['validation_metric']}",
                         "value": float(ds.attrs["validation_score"])})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    per_seed = frame.groupby(["model", "point", "seed", "column"], sort=False)["value"].mean()
    over_seeds = per_seed.groupby(["model", "point", "column"], sort=False)
    table = over_seeds.mean().unstack("column")
    n_seeds = frame.groupby(["model", "point"], sort=False)["seed"].nunique()
    columns = ["all (mean)"] + [c for c in table.columns if c != "all (mean)"]
    table = table[columns]
    if int(n_seeds.max()) > 1:
        sd = over_seeds.std(ddof=1).unstack("column")[columns]
        table = table.join(sd.add_suffix(" sd"))
    table["n_seeds"] = n_seeds.reindex(table.index).astype(int)
    selected: dict[tuple[str, str], list[str]] = {}
    for ds in headlines:
        chosen = json.loads(ds.attrs.get("selected_point", "{}") or "{}")
        if chosen:
            selected.setdefault((ds.attrs["model"], _point_label(chosen)), []).append(
                str(ds.attrs["subject"]))
    table["selected"] = [", ".join(selected.get(idx, [])) for idx in table.index]
    return table


def _point_label(point: dict) -> str:
    """A sweep point as text, without its seed: ``alignment.weight=0.1``."""
    choice = {k: v for k, v in point.items() if k != SEED_KEY}
    return ", ".join(f"{k}={v}" for k, v in choice.items()) or "(seeds)"


def format_sweep(table: pd.DataFrame, variable: str) -> str:
    """Return the sweep table as text: mean ± sd over seeds where there are several."""
    shown = pd.DataFrame(index=table.index)
    for column in [c for c in table.columns if not str(c).endswith(" sd")
                   and c not in ("n_seeds", "selected")]:
        sd = table.get(f"{column} sd")
        digits = 4 if str(column).startswith("validation") else 2
        shown[column] = [f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if sd is not None
                                               and np.isfinite(s) else "")
                         for m, s in zip(table[column], sd if sd is not None else table[column])]
    shown["seeds"] = table["n_seeds"]
    shown["selected on validation"] = table["selected"]
    return (f"sweeps: median {variable} per ROI class on the scored split (mean over subjects"
            + (", then mean ± sd over seeds" if int(table["n_seeds"].max()) > 1 else "")
            + "); 'all (mean)' = challenge-style mean; each subject's point is selected on "
            "its validation images, never on the scored split\n" + shown.to_string())


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


def format_selected(results: list) -> str:
    """Return, per swept model and subject, the point its validation selected (or '')."""
    lines = []
    for ds in results:
        chosen = json.loads(ds.attrs.get("selected_point", "{}") or "{}")
        if chosen:
            record = json.loads(ds.attrs["selection"])
            score = next(p["mean"] for p in record["points"] if p["chosen"])
            lines.append(f"  {ds.attrs['model']} {ds.attrs['subject']}: {_point_label(chosen)} "
                         f"(validation {record['metric']} {score:.4f} on "
                         f"{record['n_validation_images']} training images held out)")
    if not lines:
        return ""
    return ("\n\nswept models above are their point selected on validation (never on the "
            "scored split):\n" + "\n".join(lines))


def read_environment(run_dir: str | Path) -> dict:
    """Return the environment record of a run folder."""
    return json.loads((Path(run_dir) / "environment.json").read_text())
