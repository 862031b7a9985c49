"""Paired comparisons of two models on the same scored images, with bootstrap CIs over images.

Claims that one model beats another need an interval that reflects what varies: the
images. Vertices are not independent (neighbours share signal and noise), so resampling
vertices gives intervals far too narrow. :func:`paired_comparison` resamples the scored
images with replacement, recomputes both models' per-vertex scores on each resample, and
summarises per ROI (or ROI class) the difference of a statistic (median or mean over the
ROI's vertices) between model A and model B; the interval is the percentile interval of
that difference over resamples. Both models see the same resamples (a paired bootstrap).

:func:`compare_run` does this for two models of a run folder, reading the measured
responses of the scored images back from the run's dataset (the run folder keeps
predictions, not data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from neuroenc.evaluation.metrics import noise_normalized_score, pearson_r_resampled, r2_score_resampled

__all__ = ["paired_comparison", "compare_run", "scored_split"]

Variable = Literal["noise_normalized", "pearson", "r2"]


def _scores(variable: str, measured, predicted, weights, noise_ceiling) -> np.ndarray:
    if variable == "r2":
        return r2_score_resampled(measured, predicted, weights)
    r = pearson_r_resampled(measured, predicted, weights)
    if variable == "pearson":
        return r
    if noise_ceiling is None:
        raise ValueError("noise_normalized needs the noise ceiling of the scored images; "
                         "use variable='pearson' or 'r2'")
    return noise_normalized_score(r, noise_ceiling)


def paired_comparison(measured: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray,
                      groups: Mapping[tuple, np.ndarray], *, noise_ceiling: np.ndarray | None = None,
                      variable: Variable = "noise_normalized",
                      statistic: Literal["median", "mean"] = "median", n_boot: int = 1000,
                      confidence: float = 0.95, seed: int = 0,
                      chunk: int = 50) -> tuple[pd.DataFrame, dict[tuple, np.ndarray]]:
    """Return per group: A's and B's statistic, their difference and its bootstrap CI.

    Parameters
    ----------
    measured, predicted_a, predicted_b : ndarray of shape (n_images, n_vertices)
        Measured responses of the scored images and the two models' predictions of them.
    groups : mapping of tuple to ndarray of bool of shape (n_vertices,)
        Vertex groups, e.g. ``{("all", "all vertices"): ..., ("floc-faces", "FFA-1"): ...}``.
    noise_ceiling : ndarray of shape (n_vertices,), optional
        Needed for ``noise_normalized``.
    variable : {"noise_normalized", "pearson", "r2"}
    statistic : {"median", "mean"}
        Summary over a group's vertices (papers report medians; the challenge a mean).
    n_boot : int
        Resamples of the images (with replacement), the same for both models.
    confidence : float
    seed : int
    chunk : int
        Resamples computed at once (bounds memory: ``chunk * n_vertices`` per model).

    Returns
    -------
    table : DataFrame
        One row per group: the group key's fields (``roi_class``, ``roi`` ...),
        ``n_vertices``, ``a``, ``b``, ``difference`` (A - B, on all images), ``ci_low``,
        ``ci_high``, ``fraction_a_better`` (vertices where A's score exceeds B's).
    resampled : dict of tuple to ndarray of shape (n_boot,)
        Each group's difference on every resample (to pool subjects).
    """
    measured = np.asarray(measured, dtype=np.float64)
    n_images = measured.shape[0]
    if predicted_a.shape != measured.shape or predicted_b.shape != measured.shape:
        raise ValueError(f"measured {measured.shape}, predictions {predicted_a.shape} and "
                         f"{predicted_b.shape}: expected the same (n_images, n_vertices)")
    if n_images < 3:
        raise ValueError(f"{n_images} scored images: a bootstrap over images needs at least 3")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), found {confidence}")
    reduce = np.median if statistic == "median" else np.mean
    ones = np.ones((1, n_images))
    full_a = _scores(variable, measured, predicted_a, ones, noise_ceiling)[0]
    full_b = _scores(variable, measured, predicted_b, ones, noise_ceiling)[0]
    rng = np.random.default_rng(seed)
    resampled = {key: np.empty(n_boot) for key in groups}
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        # multinomial counts = which images a resample drew, and how often
        weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=size).astype(float)
        a = _scores(variable, measured, predicted_a, weights, noise_ceiling)
        b = _scores(variable, measured, predicted_b, weights, noise_ceiling)
        for key, mask in groups.items():
            resampled[key][start:start + size] = reduce(a[:, mask], axis=1) - reduce(b[:, mask], axis=1)
    tail = (1 - confidence) / 2 * 100
    rows = []
    for key, mask in groups.items():
        low, high = np.percentile(resampled[key], [tail, 100 - tail])
        sa, sb = float(reduce(full_a[mask])), float(reduce(full_b[mask]))
        rows.append({"key": key, "n_vertices": int(mask.sum()), "a": sa, "b": sb,
                     "difference": sa - sb, "ci_low": float(low), "ci_high": float(high),
                     "fraction_a_better": float(np.mean(full_a[mask] > full_b[mask]))})
    return pd.DataFrame(rows), resampled


def scored_split(run_dir: str | Path, subject: str, model: str):
    """Return ``(measured, predicted, noise_ceiling, image names)`` of one result of a run.

    The predictions come from ``models/<model>/<subject>/predictions.nc``; the measured
    responses and the noise ceiling are read again from the run's dataset (its
    ``config.yaml``), matched to the predictions by image file name.
    """
    from neuroenc.core.config import Registry, resolve_registry
    from neuroenc.core.context import RunContext
    from neuroenc.core.plugins import PluginManager
    from neuroenc.core.runner import read_environment
    from neuroenc.evaluation.results import read_netcdf
    import yaml

    run_dir = Path(run_dir)
    predictions = read_netcdf(run_dir / "models" / model / subject / "predictions.nc")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    environment = read_environment(run_dir)
    registry = Registry.model_validate(config)
    registry.source = Path(environment.get("registry") or run_dir / "config.yaml")
    manager = PluginManager()
    registry = resolve_registry(registry, manager)
    context = RunContext(manager=manager, cache_dir=Path(environment.get("cache_dir") or run_dir),
                         show_progress=False, base_dir=registry.base_dir)
    reader = context.build("dataset", {"name": registry.dataset.kind, **registry.dataset.params})
    data = reader.load(subject)
    split = predictions.attrs.get("split", "test")
    source = "test" if split == "test" else "train"
    names = [p.name for p in data.images[source]]
    row_of = {name: i for i, name in enumerate(names)}
    wanted = [str(n) for n in predictions["image"].values]
    missing = [n for n in wanted if n not in row_of]
    if missing:
        raise ValueError(f"{run_dir}/models/{model}/{subject}/predictions.nc: images "
                         f"{missing[:3]} are not in the dataset's {source} split any more")
    rows = np.array([row_of[n] for n in wanted])
    measured = data.responses(source)[rows]
    noise_ceiling = data.noise_ceiling() if split == "test" and data.has_noise_ceiling else None
    return measured, predictions["predicted"].values, noise_ceiling, wanted


def compare_run(run_dir: str | Path, model_a: str, model_b: str, *,
                subjects: Sequence[str] | None = None, level: Literal["roi", "roi_class"] = "roi_class",
                variable: Variable | None = None, statistic: Literal["median", "mean"] = "median",
                n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Return the paired comparison of two models of a run, per subject and pooled.

    Rows: per subject and ROI group (``level``: each ROI class, or each ROI; plus all
    vertices) the columns of :func:`paired_comparison`; then ``subject == "all"`` rows
    whose difference and CI average the per-subject differences resample by resample
    (subjects resampled independently). ``variable`` defaults to ``noise_normalized``
    where the run has a noise ceiling, else ``pearson``.
    """
    from neuroenc.evaluation.results import load_run, roi_groups

    results = load_run(run_dir, allow_incomplete=True)
    for name in (model_a, model_b):
        if not any(m == name for m, _ in results):
            found = sorted({m for m, _ in results})
            raise KeyError(f"{run_dir}: no model {name!r}; found: {', '.join(found)}")
    available = sorted({s for m, s in results if m == model_a} & {s for m, s in results if m == model_b})
    chosen = list(subjects) if subjects is not None else available
    frames, pooled = [], {}
    for subject in chosen:
        ds = results[model_a, subject]
        measured, pred_a, nc, names_a = scored_split(run_dir, subject, model_a)
        _, pred_b, _, names_b = scored_split(run_dir, subject, model_b)
        if names_a != names_b:
            raise ValueError(f"{subject}: {model_a} and {model_b} were scored on different images")
        var = variable or ("noise_normalized" if nc is not None else "pearson")
        groups = {(cls, roi): mask for cls, roi, mask in roi_groups(ds, level)}
        table, resampled = paired_comparison(measured, pred_a, pred_b, groups, noise_ceiling=nc,
                                             variable=var, statistic=statistic, n_boot=n_boot,
                                             confidence=confidence, seed=seed)
        for key, values in resampled.items():
            pooled.setdefault(key, []).append((values, table.loc[table.key == key].iloc[0]))
        table.insert(0, "subject", subject)
        table.attrs["variable"] = var
        frames.append(table)
    if not frames:
        raise ValueError(f"{run_dir}: no subject has both {model_a!r} and {model_b!r}")
    tail = (1 - confidence) / 2 * 100
    rows = []
    for key, entries in pooled.items():
        if len(entries) != len(frames):
            continue  # a ROI some subject lacks
        diffs = np.mean([v for v, _ in entries], axis=0)
        low, high = np.percentile(diffs, [tail, 100 - tail])
        rows.append({"subject": "all", "key": key,
                     "n_vertices": int(sum(r.n_vertices for _, r in entries)),
                     "a": float(np.mean([r.a for _, r in entries])),
                     "b": float(np.mean([r.b for _, r in entries])),
                     "difference": float(np.mean([r.difference for _, r in entries])),
                     "ci_low": float(low), "ci_high": float(high),
                     "fraction_a_better": float(np.average([r.fraction_a_better for _, r in entries],
                                                           weights=[r.n_vertices for _, r in entries]))})
    out = pd.concat(frames + ([pd.DataFrame(rows)] if len(frames) > 1 else []), ignore_index=True)
    out.insert(1, "roi_class", [k[0] for k in out.key])
    if level == "roi":
        out.insert(2, "roi", [k[1] for k in out.key])
    out = out.drop(columns="key")
    out.attrs.update(variable=frames[0].attrs["variable"], statistic=statistic, n_boot=n_boot,
                     confidence=confidence, model_a=model_a, model_b=model_b)
    return out
