"""Narrowing a run (--models, --subjects, --output, --cache-dir), its dry-run plan, and
the checks that let ``neuroenc run --resume`` keep a finished part of a killed run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuroenc.core.config import Registry, RegistryError

__all__ = ["PlanRow", "narrow_registry", "plan_run", "format_plan", "part_problem",
           "registry_of_run"]


def narrow_registry(registry: Registry, *, models: list[str] | None = None,
                    subjects: list[str] | None = None, output: Path | None = None,
                    cache_dir: Path | None = None, replicates: int | None = None) -> Registry:
    """Return ``registry`` restricted to some models / subjects, with folders overridden.

    ``models`` are the registry's model names (a swept model keeps all its points);
    ``subjects`` are written as in ``dataset.subjects`` (``1``, ``subj01``);
    ``replicates`` sets every kept model's ``replicates`` (seeds seed, seed+1, ...).

    Raises
    ------
    RegistryError
        A model name the registry does not have (with the known names).
    """
    from neuroenc.core.plugins import suggest

    source = str(registry.source or "registry")
    updates: dict = {}
    if models:
        unknown = [m for m in models if m not in registry.models]
        if unknown:
            known = list(registry.models)
            raise RegistryError(source, [("models", f"--models: unknown model {m!r}; known: "
                                          f"{', '.join(known)}{suggest(m, known)}") for m in unknown])
        updates["models"] = {m: registry.models[m] for m in models}
    narrowed = registry.model_copy(update=updates, deep=True)
    narrowed.source = registry.source
    if subjects:
        narrowed.dataset.subjects = [int(s) if str(s).isdigit() else s for s in subjects]
    if output is not None:
        narrowed.output.dir = Path(output).resolve()
    if cache_dir is not None:
        narrowed.compute.cache_dir = Path(cache_dir).resolve()
    if replicates is not None:
        for name, model in narrowed.models.items():
            if "seed" in model.sweep:
                raise RegistryError(source, [(f"models.{name}.sweep.seed", "--replicates: this "
                                              "model sweeps seeds itself")])
            model.replicates = replicates
    return narrowed


def registry_of_run(run_dir: Path) -> Registry:
    """Return the registry a run was started with (its ``config.yaml``), paths as they were.

    Relative paths resolve against the original registry's folder (``environment.json``
    records it), as they did when the run started.
    """
    from neuroenc.core.config import load_registry

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise RegistryError(str(run_dir), [("", "not a run folder: no config.yaml (expected "
                                            "<output.dir>/<experiment>/<timestamp>/)")])
    registry = load_registry(config)
    try:
        original = json.loads((run_dir / "environment.json").read_text()).get("registry")
    except (OSError, ValueError):
        original = None
    if original and original != "None":
        registry.source = Path(original)
    return registry


@dataclass
class PlanRow:
    subject: str
    model: str
    point: dict
    feature_sets: list[tuple[str, str, bool]] = field(default_factory=list)  # (what, key, cached)


def plan_run(registry: Registry, manager, *, log=print) -> list[PlanRow]:
    """Return what a run would do: per subject and model (sweep point), the feature sets
    it extracts and whether each is in the cache. Reads the dataset (for the demo this
    generates it on first use) and builds each distinct backbone once; fits nothing."""
    from neuroenc.core.config import ComponentRef, default_cache_dir, recipe_slots
    from neuroenc.core.context import RunContext, seed_everything
    from neuroenc.core.runner import _subjects
    from neuroenc.stimuli.features import feature_cache_key

    cache_dir = (registry.resolve_path(registry.compute.cache_dir)
                 if registry.compute.cache_dir else default_cache_dir())
    context = RunContext(manager=manager, cache_dir=cache_dir, device="cpu", seed=registry.seed,
                         show_progress=False, base_dir=registry.base_dir)
    reader = context.build("dataset", {"name": registry.dataset.kind, **registry.dataset.params})
    subjects = _subjects(registry, reader)
    backbones: dict[str, object] = {}
    rows = []
    for subject in subjects:
        data = reader.load(subject)
        splits = {"train": data.train_images, **({"test": data.test_images} if data.test_images else {})}
        for variant in registry.variants():
            recipe = manager.get("recipe", variant.recipe)
            params = recipe.params.model_validate(variant.params,
                                                  context={"base_dir": registry.base_dir})
            row = PlanRow(subject, variant.name, variant.point)
            for field_name, kind in recipe_slots(recipe.params).items():
                ref = getattr(params, field_name)
                if kind != "image_backbone" or ref is None:
                    continue
                ref = ref if isinstance(ref, ComponentRef) else ComponentRef.model_validate(ref)
                spec = json.dumps(ref.model_dump(mode="json"), sort_keys=True)
                if spec not in backbones:
                    seed_everything(registry.seed)
                    backbones[spec] = context.build("image_backbone", ref)
                backbone = backbones[spec]
                for split, images in splits.items():
                    key, _ = feature_cache_key(backbone, images, hash_index=cache_dir / "file-hashes")
                    cached = (cache_dir / "features" / key / "meta.json").is_file()
                    label = backbone.identity().get("model_name", ref.name)
                    row.feature_sets.append((f"{label} {split} ({len(images)} images)", key, cached))
            rows.append(row)
    return rows


def format_plan(registry: Registry, rows: list[PlanRow]) -> str:
    """Return the plan as text: the grid, then every distinct feature set."""
    subjects = list(dict.fromkeys(r.subject for r in rows))
    models = list(dict.fromkeys(r.model for r in rows))
    n_points = sum(1 for v in registry.variants() if v.point)
    lines = [f"experiment {registry.name!r}: {len(models)} model(s)"
             + (f" ({n_points} sweep points)" if n_points else "")
             + f" x {len(subjects)} subject(s) = {len(rows)} fits",
             f"  models: {', '.join(models)}", f"  subjects: {', '.join(subjects)}",
             f"  results: {registry.resolve_path(registry.output.dir) / registry.name}/<timestamp>/"]
    seen: dict[str, tuple[str, bool, list[str]]] = {}
    for row in rows:
        for what, key, cached in row.feature_sets:
            entry = seen.setdefault(key, (f"{row.subject} {what}", cached, []))
            entry[2].append(row.model)
    if seen:
        n_cached = sum(1 for _, c, _ in seen.values() if c)
        lines.append(f"feature sets: {len(seen)} ({n_cached} cached, {len(seen) - n_cached} to extract)")
        for key, (what, cached, users) in seen.items():
            lines.append(f"  {'cached ' if cached else 'extract'}  {what}  [{key}]  for "
                         f"{', '.join(dict.fromkeys(users))}")
    return "\n".join(lines)


def part_problem(folder: Path, *, model: str, subject: str, n_vertices: int, n_scored: int,
                 submission: Path | None, save_encoders: bool) -> str | None:
    """Return why a part of a killed run cannot be kept, or None when it is complete.

    Checked, not just present: the completion marker, both result files readable with the
    expected model, subject and shapes, the submission files' shapes, and the saved
    encoder (its record, and its arrays' header against the record).
    """
    from neuroenc.core.run_status import MARKER
    from neuroenc.evaluation.results import read_netcdf

    if not (folder / MARKER).is_file():
        return f"no {MARKER}"
    try:
        scores = read_netcdf(folder / "scores.nc")
        predictions = read_netcdf(folder / "predictions.nc")
    except (OSError, ValueError) as exc:
        return f"a result file cannot be read ({exc})"
    if (scores.attrs.get("model"), scores.attrs.get("subject")) != (model, subject):
        return f"scores.nc is of {scores.attrs.get('model')}/{scores.attrs.get('subject')}"
    if scores.sizes.get("vertex") != n_vertices:
        return f"scores.nc has {scores.sizes.get('vertex')} vertices, expected {n_vertices}"
    if predictions["predicted"].shape != (n_scored, n_vertices):
        return (f"predictions.nc has shape {predictions['predicted'].shape}, expected "
                f"{(n_scored, n_vertices)}")
    if submission is not None:
        files = sorted(submission.glob("*_pred_test.npy"))
        try:
            widths = sum(np.load(f, mmap_mode="r", allow_pickle=False).shape[1] for f in files)
        except (OSError, ValueError, IndexError) as exc:
            return f"a submission file cannot be read ({exc})"
        if not files or widths != n_vertices:
            return f"submission files cover {widths} vertices, expected {n_vertices}"
    if save_encoders:
        status = folder / "encoder.status.json"
        if not status.is_file():
            return "no encoder.status.json"
        if json.loads(status.read_text()).get("saved"):
            try:
                from safetensors import safe_open

                record = json.loads((folder / "encoder" / "encoder.json").read_text())
                with safe_open(str(folder / "encoder" / "arrays.safetensors"), "np") as fh:
                    shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
            except Exception as exc:  # any unreadable encoder file: redo the part
                return f"the saved encoder cannot be read ({type(exc).__name__}: {exc})"
            expected = {k: v["shape"] for k, v in record["arrays"].items()}
            if shapes != expected:
                return "the saved encoder's arrays do not match encoder.json"
    return None
