"""Voxel mappers on frozen features: per-vertex cross-validated ridge regression."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuroenc import Component


class RidgeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alphas: list[float] = Field(
        default_factory=lambda: [float(a) for a in np.logspace(-1, 7, 17)],
        description="regularisation grid; the best alpha is chosen for every vertex by CV")
    n_folds: int = Field(5, ge=2, description="contiguous K-fold cross-validation folds")
    standardize: bool = Field(True, description="z-score features with training statistics")
    fit_intercept: bool = True
    dtype: Literal["float32", "float64"] = "float32"
    target_batch_size: int | None = Field(
        None, ge=1, description="vertices per batch (bounds memory); None: the solver's default")

    @field_validator("alphas")
    @classmethod
    def _positive(cls, alphas: list[float]) -> list[float]:
        if not alphas or any(a <= 0 for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of positive numbers, found {alphas}")
        return alphas


def _ridge(params: RidgeParams, context):
    from neuroenc.models.ridge import RidgeCV

    return RidgeCV(alphas=np.asarray(params.alphas), n_folds=params.n_folds,
                   fit_intercept=params.fit_intercept, standardize=params.standardize,
                   device=context.device, dtype=params.dtype,
                   target_batch_size=params.target_batch_size)


COMPONENTS = [
    Component("ridge", _ridge, RidgeParams,
              "ridge regression with its alpha chosen by cross-validation for every vertex"),
]
