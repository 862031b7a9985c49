"""The ``image-text-ridge`` recipe: image features and caption embeddings, one banded ridge.

The joint model that ``variance-partitioning`` fits, as a model of its own: image
features of a backbone (layers concatenated) and the embedded captions of the same images
(a captioner + a text encoder; for the scored and test images too, so the dataset or the
captioner must describe them: the demo's ``dataset-captions``, NSD's COCO captions, or a
VLM such as ``minigpt4``) form two bands of a banded ridge
(:class:`neuroenc.models.ridge.BandedRidgeCV`). Each vertex's grid of band weights holds
the text-to-image ratios ``band_ratios`` **and the two single-band models** (image only:
ratio 0, text only: ratio inf), each with the alpha grid, and the vertex keeps the point
with the best contiguous K-fold score on the training images. So on that cross-validation
every vertex scores at least as well as the better of the image-only and text-only ridge
(they are points of its grid, computed with the same standardisation, folds and alphas),
and it is never told the scored split.

Per-vertex maps (``vertex_maps``): ``itr_text_share``, the text band's share of the band
weights ``r / (1 + r)`` (0: image only, 1: text only), and ``itr_cv_r2``, the chosen
point's cross-validated R^2 on the training images.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from neuroenc import Component
from neuroenc.models.ridge import BandedRidgeCV

from .text import ImageTextFeatures, ImageTextParams, TextRidgeModel


class ImageTextRidgeParams(ImageTextParams):
    """Parameters of ``image-text-ridge``."""

    single_bands: bool = Field(True, description="also fit each band alone, so that every "
                               "vertex is at least as good on CV as the better single band")


class ImageTextRidgeModel(ImageTextFeatures):
    """Image features + caption embeddings -> per-vertex banded ridge (joint model)."""

    #: Shown in the run's encoders.json: predicting new images needs their captions.
    not_saved_reason = TextRidgeModel.not_saved_reason

    def __init__(self, params: ImageTextRidgeParams, context):
        super().__init__(params, context)
        self.ridge: BandedRidgeCV | None = None

    def fit(self, data, train_index: np.ndarray) -> None:
        p = self.params
        self.ridge = BandedRidgeCV(p.alphas, p.band_ratios, p.n_folds, device=self.context.device,
                                   dtype=p.dtype, single_bands=p.single_bands)
        self.ridge.fit(self.bands(data, "train", train_index), data.responses("train")[train_index])

    def predict(self, data, split: str, index: np.ndarray | None = None) -> np.ndarray:
        if self.ridge is None:
            raise RuntimeError("image-text-ridge: predict() before fit()")
        return np.asarray(self.ridge.predict(self.bands(data, split, index)), dtype=np.float32)

    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Return ``itr_text_share`` (0 image only .. 1 text only) and ``itr_cv_r2``."""
        if self.ridge is None:
            return {}
        ratio = self.ridge.best_ratio_
        with np.errstate(invalid="ignore"):
            share = np.where(np.isinf(ratio), 1.0, ratio / (1.0 + ratio))
        return {"itr_text_share": share.astype(np.float32),
                "itr_cv_r2": self.ridge.cv_score_.astype(np.float32)}


RECIPES = [
    Component("image-text-ridge", ImageTextRidgeModel, ImageTextRidgeParams,
              "image features + caption embeddings -> banded ridge whose per-vertex grid holds "
              "both single-band models (never worse on CV than the better band)"),
]
