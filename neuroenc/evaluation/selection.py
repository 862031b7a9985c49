"""Choosing a sweep point on training data: the validation part, its score, the choice.

A swept model (``sweep:`` or ``replicates:`` in registry.yaml) is fitted once per point on
the training images less a validation part, the same images for every point and seed
(:func:`validation_split`). Each fit predicts the validation part; :func:`selection_score`
turns those predictions into one number; :func:`select_point` averages it over seeds and
takes the best point. The scored split (test, or a holdout) plays no part: it is
predicted by every point, for display, and reported for the chosen one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["validation_split", "selection_score", "select_point", "Selection", "SELECTION_FILE"]

#: ``models/<model>/<subject>/selection.json``: what was chosen, on what, from which scores
SELECTION_FILE = "selection.json"


def validation_split(train_index: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(fit_index, validation_index)``: a seeded split of ``train_index``.

    The validation part has ``round(fraction * n)`` images, at least 2, and leaves at
    least 2 to fit on.

    Raises
    ------
    ValueError
        Fewer than 4 training images.
    """
    train_index = np.asarray(train_index)
    n = len(train_index)
    if n < 4:
        raise ValueError(f"selection needs at least 4 training images to hold some out for "
                         f"validation, found {n}")
    n_val = min(n - 2, max(2, int(round(fraction * n))))
    order = np.random.default_rng([seed, 0x5E1EC7]).permutation(n)
    return np.sort(train_index[order[n_val:]]), np.sort(train_index[order[:n_val]])


def selection_score(measured: np.ndarray, predicted: np.ndarray, metric: str) -> float:
    """Return one validation number (higher is better) for ``metric``.

    ``metric`` is ``<statistic>_<per-vertex metric>``: ``median_r2``, ``mean_r2``,
    ``median_pearson``, ``mean_pearson``, ``mean_pearson_squared``. Vertices without a
    value (constant responses) are left out, as in the challenge score.

    Raises
    ------
    ValueError
        An unknown metric, or no vertex with a value.
    """
    from neuroenc.evaluation.metrics import pearson_r, r2_score

    statistic, _, name = metric.partition("_")
    per_vertex = {"r2": lambda: r2_score(measured, predicted),
                  "pearson": lambda: pearson_r(measured, predicted),
                  "pearson_squared": lambda: pearson_r(measured, predicted) ** 2}
    if statistic not in ("mean", "median") or name not in per_vertex:
        raise ValueError(f"unknown selection metric {metric!r}; expected median_r2, mean_r2, "
                         "median_pearson, mean_pearson or mean_pearson_squared")
    values = np.asarray(per_vertex[name](), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError(f"selection metric {metric!r}: no vertex has a value")
    return float(np.mean(values) if statistic == "mean" else np.median(values))


@dataclass
class Selection:
    """The outcome of one selection: the chosen point and every point's validation score."""

    model: str
    subject: str
    metric: str
    n_validation: int
    chosen: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)  # {point, seeds, scores, mean}

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "subject": self.subject, "on": "validation",
                           "metric": self.metric, "n_validation_images": self.n_validation,
                           "chosen": self.chosen, "points": self.points}, indent=1)


def select_point(model: str, subject: str, metric: str, n_validation: int,
                 entries: Sequence[tuple[dict[str, Any], int | None, float]]) -> Selection:
    """Return the point with the best validation score, averaged over its seeds.

    ``entries``: ``(point without seed, seed or None, validation score)`` per fit, in
    sweep order. Ties keep the earlier point. A point whose score is not finite on some
    seed is never chosen over one with finite scores.

    Raises
    ------
    ValueError
        No entries.
    """
    if not entries:
        raise ValueError(f"{model} {subject}: no sweep points to select from")
    groups: dict[str, dict[str, Any]] = {}
    for point, seed, score in entries:
        key = json.dumps(point, sort_keys=True)
        group = groups.setdefault(key, {"point": dict(point), "seeds": [], "scores": []})
        group["seeds"].append(seed)
        group["scores"].append(float(score))
    best_key, best = None, -np.inf
    for key, group in groups.items():
        scores = np.asarray(group["scores"])
        group["mean"] = float(scores.mean()) if np.isfinite(scores).all() else float("nan")
        group["sd"] = float(scores.std(ddof=1)) if len(scores) > 1 and np.isfinite(scores).all() \
            else float("nan")
        if np.isfinite(group["mean"]) and group["mean"] > best:
            best_key, best = key, group["mean"]
    if best_key is None:  # no point has finite scores: keep the first, say so in the record
        best_key = next(iter(groups))
    return Selection(model, subject, metric, n_validation, groups[best_key]["point"],
                     [dict(g, chosen=(k == best_key)) for k, g in groups.items()])
