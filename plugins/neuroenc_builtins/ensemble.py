"""The ``ensemble`` recipe: per vertex, a weighted sum of other models' predictions.

The Algonauts 2023 winners gained about 4 points by ensembling. Members are other models
of the registry (a swept member as its point selected on validation). Each member is
fitted on the training images less a validation part (the runner's, the one its sweeps
are compared on), predicts that part, and per vertex the weights are fitted on those
predictions only:

* ``stack`` (default): non-negative least squares with a free intercept. Solved exactly
  and batched over vertices: the optimum is the least-squares solution on its positive
  set, so it is the best of the per-subset solutions that come out non-negative (2^K
  subsets for K members, at most 8). It includes every single member (weight 1) as a
  candidate, so on the validation part it is never worse than its best member;
* ``softmax``: weights proportional to exp(r / temperature) of each member's validation
  correlation (no intercept), a smoother choice with fewer fitted numbers.

The scored split is predicted by the members as fitted (on the training images less the
validation part) and combined with these weights. Retraining is cheap where members'
work is cached: frozen features come from the feature cache, and an llm-vem member
reuses the training its sweep point did on the same images.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neuroenc import Component

MAX_MEMBERS = 8


class EnsembleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: list[str] = Field(..., min_length=2, max_length=MAX_MEMBERS,
                               description="names of other models of the registry")
    method: Literal["stack", "softmax"] = Field(
        "stack", description="'stack': non-negative least squares per vertex on the validation "
        "predictions; 'softmax': weights from each member's validation correlation")
    temperature: float = Field(0.02, gt=0, description="softmax: temperature on correlations")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="held out when the runner "
                                       "gives no validation part")


def nonnegative_stack(predictions: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per-vertex non-negative weights and intercepts that best combine predictions.

    ``predictions``: (n_members, n_images, n_vertices); ``measured``: (n_images,
    n_vertices). Minimises, per vertex, ``sum_i (y_i - b - sum_k w_k p_ki)^2`` with
    ``w >= 0`` and a free ``b``. Returns ``(weights (n_members, n_vertices), intercepts
    (n_vertices,))``.
    """
    P = np.asarray(predictions, np.float64)
    y = np.asarray(measured, np.float64)
    k, n, v = P.shape
    if y.shape != (n, v):
        raise ValueError(f"predictions {P.shape} and measured {y.shape} do not match")
    Pc = P - P.mean(axis=1, keepdims=True)   # the free intercept: centre everything
    yc = y - y.mean(axis=0)
    gram = np.einsum("aiv,biv->vab", Pc, Pc)  # (v, k, k)
    cross = np.einsum("aiv,iv->va", Pc, yc)   # (v, k)
    jitter = 1e-10 * np.maximum(np.trace(gram, axis1=1, axis2=2), 1e-12)[:, None]
    best_w = np.zeros((v, k))
    best_loss = np.zeros(v)                   # the empty set: all weights 0
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(k), size):
            idx = np.asarray(subset)
            g = gram[:, idx[:, None], idx[None, :]] + jitter[:, :, None] * np.eye(size)
            w = np.linalg.solve(g, cross[:, idx][..., None])[..., 0]
            # loss relative to ||yc||^2: -2 w.b + w'Gw = -w.b at the least-squares solution
            loss = -np.einsum("va,va->v", w, cross[:, idx])
            better = (w >= 0).all(axis=1) & (loss < best_loss)
            best_loss = np.where(better, loss, best_loss)
            full = np.zeros((v, k))
            full[:, idx] = w
            best_w = np.where(better[:, None], full, best_w)
    weights = best_w.T
    intercepts = y.mean(axis=0) - np.einsum("kv,kv->v", weights, P.mean(axis=1))
    return weights.astype(np.float32), intercepts.astype(np.float32)


def softmax_weights(predictions: np.ndarray, measured: np.ndarray, temperature: float) -> np.ndarray:
    """Return (n_members, n_vertices) weights ∝ exp(validation r / temperature)."""
    from neuroenc.evaluation.metrics import pearson_r

    r = np.stack([np.nan_to_num(pearson_r(measured, p), nan=-1.0) for p in predictions])
    z = (r - r.max(axis=0)) / temperature
    w = np.exp(z)
    return (w / w.sum(axis=0)).astype(np.float32)


class EnsembleModel:
    """Fits its members on the training images less a validation part, weights on it."""

    def __init__(self, params: EnsembleParams, context):
        self.params = params
        self.context = context
        self.members: dict[str, object] = {}
        self.weights: np.ndarray | None = None
        self.intercepts: np.ndarray | None = None

    def _specs(self) -> dict:
        missing = [m for m in self.params.members if m not in self.context.models]
        if missing:
            raise ValueError(f"ensemble: member(s) {missing} are not models of this run; "
                             f"available: {', '.join(self.context.models) or 'none'}")
        return {m: self.context.models[m] for m in self.params.members}

    def fit(self, data, train_index: np.ndarray, validation_index: np.ndarray | None = None) -> None:
        from neuroenc.core.context import seed_everything
        from neuroenc.evaluation.selection import validation_split

        if validation_index is None or len(validation_index) < 2:
            train_index, validation_index = validation_split(
                train_index, self.params.validation_fraction, self.context.seed)
        measured = np.asarray(data.responses("train")[validation_index], np.float32)
        predictions = []
        for name, spec in self._specs().items():
            context = dataclasses.replace(self.context, seed=spec.seed, models={})
            seed_everything(spec.seed)
            member = context.build("recipe", {"name": spec.recipe, **spec.params})
            if "validation_index" in inspect.signature(member.fit).parameters:
                member.fit(data, train_index, validation_index=validation_index)
            else:
                member.fit(data, train_index)
            self.members[name] = member
            predictions.append(_responses(member.predict(data, "train", validation_index)))
        stacked = np.stack(predictions)
        if self.params.method == "stack":
            self.weights, self.intercepts = nonnegative_stack(stacked, measured)
        else:
            self.weights = softmax_weights(stacked, measured, self.params.temperature)
            self.intercepts = np.zeros(measured.shape[1], np.float32)
        self.validation_predictions = stacked  # for checks: what the weights were fitted on

    def predict(self, data, split: str, index: np.ndarray | None = None) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("ensemble: predict() before fit()")
        out = np.array(self.intercepts, np.float32)[None]
        for w, member in zip(self.weights, self.members.values()):
            out = out + w[None] * _responses(member.predict(data, split, index))
        return out.astype(np.float32)

    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Each member's weight per vertex (``weight_<member>``): which model wins where."""
        return {f"weight_{_safe(name)}": w for name, w in zip(self.members, self.weights)}

    @property
    def vertex_map_units(self) -> dict[str, str]:
        return {f"weight_{_safe(name)}": f"ensemble weight of {name}" for name in self.members}

    def state(self):
        from neuroenc.core.encoders import EncoderNotSavable

        raise EncoderNotSavable("ensemble: not saved as one encoder; its members are saved as "
                                "their own models")


def _responses(output) -> np.ndarray:
    from neuroenc.interfaces import Prediction

    return Prediction.of(output).responses


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")


COMPONENTS = [
    Component("ensemble", EnsembleModel, EnsembleParams,
              "per-vertex weighted sum of other models, weights fitted on a validation part "
              "of the training images (non-negative stacking or softmax)"),
]
