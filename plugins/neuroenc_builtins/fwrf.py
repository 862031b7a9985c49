"""The ``fwrf`` voxel mapper: a Gaussian pooling field and ridge weights per vertex.

A wrapper of :mod:`neuroenc.models.fwrf` (the numerical kernel) for the ``frozen-features``
recipe. Unlike ``ridge`` it needs each layer's feature *maps*, separately: give the
recipe a backbone with ``pooling: map`` and the recipe hands the mapper the cached maps
of every layer (memory-mapped, not concatenated) because the mapper says
``takes_feature_maps = True``. docs/readouts.md describes the model and its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neuroenc import Component


class FwrfParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_sizes: int = Field(8, ge=1, description="candidate field sizes (sigma), log-spaced")
    min_size: float = Field(0.04, gt=0, description="smallest sigma, fraction of the image side")
    max_size: float = Field(0.4, gt=0, description="largest sigma, fraction of the image side")
    spacing: float = Field(1.4, gt=0, description="grid step of candidate centres, in units of "
                           "each size's sigma (denser for small fields)")
    extent: float = Field(1.0, gt=0, description="side of the square the centres cover, in "
                          "image sides (1: centres on the image; >1 also beyond its edge)")
    max_per_side: int | None = Field(None, ge=1, description="at most this many centres per "
                                     "side for any size (bounds the grid)")
    alphas: list[float] = Field(
        default_factory=lambda: [float(a) for a in np.logspace(-1, 7, 17)],
        description="ridge strengths on standardised pooled features; chosen per vertex")
    exponents: list[float] = Field(
        default_factory=lambda: [1.0], description="candidate powers n of the compressive "
        "nonlinearity sign(x)|x|^n on the pooled features (CSS, Kay et al. 2013); 1 = linear; "
        "each vertex keeps the best; every value multiplies the fitting time")
    transform: Literal["none", "relu", "abs", "square"] = Field(
        "none", description="pointwise transform of the maps before pooling")
    cv: Literal["gcv", "kfold"] = Field(
        "gcv", description="how a field and alpha are scored on the training images: "
        "generalised cross-validation (fast) or contiguous K-fold (n_folds times the work)")
    n_folds: int = Field(5, ge=2, description="folds for cv: kfold")
    dtype: Literal["float32", "float64"] = "float32"
    candidate_batch_size: int | None = Field(None, ge=1, description="candidates per batch; "
                                             "None: sized to a few hundred MiB")
    target_batch_size: int | None = Field(None, ge=1, description="vertices per batch")
    visual_field_deg: float | None = Field(
        None, gt=0, description="degrees of visual angle the images span; None: the "
        "dataset's (metadata visual_field_deg), else RF outputs are in image fractions")

    @field_validator("alphas", "exponents")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"expected a non-empty list of positive numbers, found {values}")
        return values

    @model_validator(mode="after")
    def _sizes(self) -> FwrfParams:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is smaller than min_size {self.min_size}")
        return self


class FwrfMapper:
    """Voxel mapper: per vertex, the best Gaussian pooling field of the feature maps + ridge."""

    #: The frozen-features recipe passes ``{layer: (n_images, C, H, W)}`` maps, not vectors.
    takes_feature_maps = True

    def __init__(self, params: FwrfParams, device: str = "cpu"):
        from neuroenc.models.fwrf import candidate_grid

        self.params = params
        self.device = device
        self.candidates = candidate_grid(params.n_sizes, params.min_size, params.max_size,
                                         params.spacing, params.extent, params.max_per_side)
        self.result = None
        self.visual_field_deg: float | None = params.visual_field_deg

    def fit(self, features: Mapping[str, np.ndarray], responses: np.ndarray, *,
            rows: np.ndarray | None = None, visual_field_deg: float | None = None) -> FwrfMapper:
        """Fit on maps ``{layer: (n_images, C, H, W)}`` (images ``rows``) and responses
        (n_fit, n_vertices); ``visual_field_deg`` is the dataset's image extent, if known."""
        from neuroenc.models.fwrf import solve_fwrf

        if self.params.visual_field_deg is None:
            self.visual_field_deg = visual_field_deg
        p = self.params
        self.layers = list(features)
        self.result = solve_fwrf(features, responses, self.candidates, np.asarray(p.alphas),
                                 rows=rows, exponents=p.exponents, transform=p.transform,
                                 cv=p.cv, n_folds=p.n_folds, device=self.device, dtype=p.dtype,
                                 candidate_batch_size=p.candidate_batch_size,
                                 target_batch_size=p.target_batch_size)
        return self

    def predict(self, features: Mapping[str, np.ndarray], *,
                rows: np.ndarray | None = None) -> np.ndarray:
        """Return predictions (n_images, n_vertices) for maps ``{layer: (n_images, C, H, W)}``."""
        from neuroenc.models.fwrf import predict_fwrf

        if self.result is None:
            raise RuntimeError("fwrf: predict() called before fit()")
        if list(features) != self.layers:
            raise ValueError(f"fwrf: layers {list(features)} given, fitted on {self.layers}")
        return predict_fwrf(features, self.result, rows=rows, device=self.device)

    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Return per-vertex outputs: ``rf_x``, ``rf_y``, ``rf_size``, ``rf_angle``,
        ``rf_eccentricity``, ``alpha``, ``rf_exponent``, ``fwrf_cv_score``.

        Positions and size in degrees of visual angle when the visual field is known
        (:attr:`vertex_map_units`), else in image fractions; x right, y up, origin at the
        image centre; ``rf_angle`` in degrees counter-clockwise from the right horizontal
        meridian (90 = upper vertical meridian), in (-180, 180].
        """
        from neuroenc.viz.retinotopy import polar_coordinates

        if self.result is None:
            return {}
        r = self.result
        scale = self.visual_field_deg or 1.0
        x, y, size = r.rf_x * scale, r.rf_y * scale, r.rf_size * scale
        angle, eccentricity = polar_coordinates(x, y)
        return {"rf_x": x, "rf_y": y, "rf_size": size, "rf_angle": angle,
                "rf_eccentricity": eccentricity, "alpha": r.best_alpha,
                "rf_exponent": r.best_exponent, "fwrf_cv_score": r.cv_score}

    @property
    def vertex_map_units(self) -> dict[str, str]:
        """Return the unit of each of :meth:`vertex_maps`."""
        length = "deg" if self.visual_field_deg else "image fraction"
        return {"rf_x": length, "rf_y": length, "rf_size": length, "rf_eccentricity": length,
                "rf_angle": "deg"}


def _fwrf(params: FwrfParams, context) -> FwrfMapper:
    return FwrfMapper(params, device=context.device)


COMPONENTS = [
    Component("fwrf", _fwrf, FwrfParams,
              "feature-weighted receptive field: per vertex a Gaussian pooling field of "
              "feature maps (backbone pooling: map) and ridge weights (St-Yves & Naselaris 2018)"),
]
