"""Per-vertex metrics: Pearson r, R^2 and the Algonauts 2023 noise-normalized score."""

from __future__ import annotations

from neuroenc import Component
from neuroenc.evaluation import metrics as m


def _pearson(params, context):
    return lambda measured, predicted, noise_ceiling: m.pearson_r(measured, predicted)


def _r2(params, context):
    return lambda measured, predicted, noise_ceiling: m.r2_score(measured, predicted)


def _noise_normalized(params, context):
    def metric(measured, predicted, noise_ceiling):
        if noise_ceiling is None:
            return None  # a held-out training part has no noise ceiling
        return m.noise_normalized_score(m.pearson_r(measured, predicted), noise_ceiling)
    return metric


COMPONENTS = [
    Component("pearson", _pearson, description="Pearson correlation per vertex"),
    Component("r2", _r2, description="coefficient of determination per vertex"),
    Component("noise_normalized", _noise_normalized,
              description="Algonauts 2023 score: 100 * max(r,0)^2 / noise ceiling, capped at 100"),
]
