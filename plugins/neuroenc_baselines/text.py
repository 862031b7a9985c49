"""Caption-based baselines: ``text-ridge`` and ``variance-partitioning``.

``text-ridge``
    Every image is described by a captioner (``dataset-captions``, ``minigpt4`` ...), the
    caption embedded by a text encoder (``sentence-transformers``, ``clip`` ...), and a
    voxel mapper (default: per-vertex cross-validated ridge) maps the embedding to the
    fMRI. No pixel reaches the model: it measures how much of each vertex's response a
    description of the image explains.

``variance-partitioning``
    Image features (a backbone) and caption embeddings of the same images. Three models
    per vertex: image only, text only, and both (joint); their R^2 on the scored split
    (held-out images) partition the explained variance (the "commonality analysis" of
    encoding-model papers, e.g. Lescroart et al. 2015, de Heer et al. 2017)::

        unique_image = R2_joint - R2_text
        unique_text  = R2_joint - R2_image
        shared       = R2_image + R2_text - R2_joint

    The joint model is a banded ridge: each band (image, text) is z-scored and scaled to
    unit total variance, then the text band is weighted ``sqrt(r)`` and the image band
    ``1 / sqrt(r)`` for every ratio ``r`` of a small grid; for each ratio the usual
    per-vertex cross-validated ridge (:func:`neuroenc.models.ridge.solve_ridge_cv`) picks an alpha,
    and each vertex keeps the (ratio, alpha) with the best cross-validated score. Scaling
    a band by ``w`` is the same as dividing its penalty by ``w**2``, so this is ridge with
    one alpha per band and vertex (himalaya's banded ridge), searched on a grid rather
    than by gradient or random search. The single-band models are plain per-vertex
    cross-validated ridges.

    ``predict`` returns the joint model's predictions with the image-only and text-only
    predictions as parts (:class:`neuroenc.interfaces.Prediction`); the runner scores
    all three on the scored split (``r2``, ``r2_image``, ``r2_text`` ...), and the
    recipe's ``derived_scores`` turns those R^2 into the per-vertex maps
    ``vp_r2_image``, ``vp_r2_text``, ``vp_r2_joint``, ``vp_unique_image``,
    ``vp_unique_text`` and ``vp_shared``; ``vp_text_weight`` (the chosen text-to-image
    band weight ratio) comes from ``vertex_maps``. The recipe never sees the measured
    responses of the scored images (the run needs ``r2`` among its metrics).

    On finite data the parts are estimates: a joint model that overfits can make a
    unique part slightly negative, and a shared part can be negative when the two
    feature sets suppress each other's noise. They are not clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuroenc import Component
from neuroenc.core.config import BackboneRef, CaptionerRef, ComponentRef, MapperRef, TextEncoderRef
from neuroenc.interfaces import Prediction
from neuroenc.evaluation.metrics import r2_score
from neuroenc.models.ridge import BandedRidgeCV
from neuroenc.models.ridge._banded import DEFAULT_BAND_ALPHAS as DEFAULT_ALPHAS
from neuroenc.models.ridge._banded import DEFAULT_BAND_RATIOS

from .devkit import layer_features

__all__ = ["BandedRidgeCV", "VariancePartitioner", "variance_partition", "caption_embeddings",
           "TextRidgeModel", "VariancePartitioningModel"]


# --------------------------------------------------------------------------- kernels


def variance_partition(r2_image: np.ndarray, r2_text: np.ndarray,
                       r2_joint: np.ndarray) -> dict[str, np.ndarray]:
    """Return the unique and shared parts of the explained variance, per vertex.

    Parameters
    ----------
    r2_image, r2_text, r2_joint : ndarray of shape (n_vertices,)
        Held-out R^2 of the image-only, text-only and joint models.

    Returns
    -------
    parts : dict of str to ndarray of shape (n_vertices,)
        ``unique_image = r2_joint - r2_text``, ``unique_text = r2_joint - r2_image``,
        ``shared = r2_image + r2_text - r2_joint`` (so ``unique_image + unique_text +
        shared == r2_joint``).
    """
    r2_image, r2_text, r2_joint = (np.asarray(a, dtype=np.float64) for a in (r2_image, r2_text, r2_joint))
    return {"unique_image": r2_joint - r2_text, "unique_text": r2_joint - r2_image,
            "shared": r2_image + r2_text - r2_joint}


class VariancePartitioner:
    """Image-only, text-only and joint (banded) ridge models of the same responses.

    Use :meth:`fit` on training images, then :meth:`partition` on held-out images with
    their measured responses.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 band_ratios: Sequence[float] = DEFAULT_BAND_RATIOS, n_folds: int = 5,
                 device: str = "cpu", dtype: str = "float32"):
        kwargs = dict(alphas=alphas, n_folds=n_folds, device=device, dtype=dtype)
        self.image = BandedRidgeCV(**kwargs)
        self.text = BandedRidgeCV(**kwargs)
        self.joint = BandedRidgeCV(band_ratios=band_ratios, **kwargs)

    def fit(self, image: np.ndarray, text: np.ndarray, responses: np.ndarray) -> VariancePartitioner:
        """Fit the three models on image features (n, p), text features (n, q), responses (n, v)."""
        self.image.fit([image], responses)
        self.text.fit([text], responses)
        self.joint.fit([image, text], responses)
        return self

    def predict(self, image: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
        """Return ``{"image", "text", "joint"}`` predictions, each (n_images, n_vertices)."""
        return {"image": self.image.predict([image]), "text": self.text.predict([text]),
                "joint": self.joint.predict([image, text])}

    def partition(self, image: np.ndarray, text: np.ndarray, responses: np.ndarray,
                  predictions: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Return per-vertex ``r2_image``, ``r2_text``, ``r2_joint``, the unique and shared
        parts (:func:`variance_partition`) and ``text_weight`` (the joint model's ratio)."""
        predictions = predictions or self.predict(image, text)
        r2 = {name: r2_score(responses, pred) for name, pred in predictions.items()}
        out = {f"r2_{name}": value for name, value in r2.items()}
        out.update(variance_partition(r2["image"], r2["text"], r2["joint"]))
        out["text_weight"] = self.joint.best_ratio_.copy()
        return out


# --------------------------------------------------------------------------- features


def caption_embeddings(captioner, encoder, data, split: str, context) -> np.ndarray:
    """Return the embedded captions of a split's images, shape (n_images, dim), float32."""
    from neuroenc.stimuli.captions import caption_images
    from neuroenc.stimuli.text_features import encode_texts

    images = data.train_images if split == "train" else data.test_images
    captions = caption_images(captioner, images, context,
                              description=f"{data.subject} {split} captions")
    return np.asarray(encode_texts(encoder, captions, context,
                                   description=f"{data.subject} {split} caption embeddings"),
                      dtype=np.float32)


class _SplitCache:
    """Per (subject, split) arrays, computed once (fit and predict both need the train split)."""

    def __init__(self, compute):
        self.compute = compute
        self.values: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, data, split: str) -> np.ndarray:
        key = (data.subject, split)
        if key not in self.values:
            self.values[key] = self.compute(data, split)
        return self.values[key]


# --------------------------------------------------------------------------- recipes


class TextRidgeParams(BaseModel):
    """Parameters of ``text-ridge``."""

    model_config = ConfigDict(extra="forbid")
    captioner: CaptionerRef = Field(..., description="describes each image, e.g. dataset-captions")
    text_encoder: TextEncoderRef = Field(..., description="embeds each caption, e.g. "
                                         "sentence-transformers")
    mapper: MapperRef = Field(default_factory=lambda: ComponentRef(name="ridge"),
                              description="voxel mapper on the caption embeddings")


class TextRidgeModel:
    """Caption embeddings -> voxel mapper (per-vertex ridge by default). No image pixels."""

    #: Shown in the run's encoders.json (neuroenc.core.encoders): nothing is saved for it.
    not_saved_reason = ("not saved: predicting new images needs captions of the new images "
                        "(a captioner run on them), which saved encoders do not do yet")

    def __init__(self, params: TextRidgeParams, context):
        self.context = context
        self.captioner = context.build("captioner", params.captioner)
        self.encoder = context.build("text_encoder", params.text_encoder)
        self.mapper = context.build("voxel_mapper", params.mapper)
        self.embeddings = _SplitCache(lambda data, split: caption_embeddings(
            self.captioner, self.encoder, data, split, self.context))

    def fit(self, data, train_index: np.ndarray) -> None:
        self.mapper.fit(self.embeddings(data, "train")[train_index],
                        data.responses("train")[train_index])

    def predict(self, data, split: str, index: np.ndarray | None = None) -> np.ndarray:
        features = self.embeddings(data, split)
        if index is not None:
            features = features[index]
        return np.asarray(self.mapper.predict(features), dtype=np.float32)


class ImageTextParams(BaseModel):
    """Parameters shared by the recipes of image features + caption embeddings."""

    model_config = ConfigDict(extra="forbid")
    backbone: BackboneRef = Field(..., description="image features (all layers concatenated)")
    captioner: CaptionerRef = Field(..., description="describes each image")
    text_encoder: TextEncoderRef = Field(..., description="embeds each caption")
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS),
                                description="ridge alphas (bands are z-scored, unit variance)")
    band_ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_BAND_RATIOS),
                                     description="text-to-image band weight ratios searched "
                                     "for the joint model")
    n_folds: int = Field(5, ge=2, description="contiguous cross-validation folds")
    dtype: str = Field("float32", description="ridge precision: float32 or float64")

    @field_validator("alphas", "band_ratios")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"expected a non-empty list of positive numbers, found {values}")
        return values


class VariancePartitioningParams(ImageTextParams):
    """Parameters of ``variance-partitioning``."""

    prefix: str = Field("vp_", description="prefix of the extra per-vertex maps")


class ImageTextFeatures:
    """Image features (a backbone, cached) and caption embeddings of each split, computed once."""

    def __init__(self, params: ImageTextParams, context):
        self.params = params
        self.context = context
        self.backbone = context.build("image_backbone", params.backbone)
        self.captioner = context.build("captioner", params.captioner)
        self.encoder = context.build("text_encoder", params.text_encoder)
        self.image_features = _SplitCache(lambda data, split: layer_features(
            self.backbone, data, split, context)[:])
        self.text_features = _SplitCache(lambda data, split: caption_embeddings(
            self.captioner, self.encoder, data, split, context))

    def bands(self, data, split: str, index: np.ndarray | None = None) -> list[np.ndarray]:
        """Return ``[image (n, p), text (n, q)]`` of a split's images (``index``: some of them)."""
        image, text = self.image_features(data, split), self.text_features(data, split)
        if index is not None:
            image, text = image[index], text[index]
        return [image, text]


class VariancePartitioningModel(ImageTextFeatures):
    """Image-only, text-only and joint banded ridge; unique and shared variance per vertex.

    The maps listed in the module docstring come from :meth:`derived_scores` and
    :meth:`vertex_maps`; the runner stores them in the results.
    """

    not_saved_reason = TextRidgeModel.not_saved_reason  # its text band needs captions too

    def __init__(self, params: VariancePartitioningParams, context):
        super().__init__(params, context)
        self.partitioner: VariancePartitioner | None = None

    def fit(self, data, train_index: np.ndarray) -> None:
        p = self.params
        self.partitioner = VariancePartitioner(p.alphas, p.band_ratios, p.n_folds,
                                               device=self.context.device, dtype=p.dtype)
        self.partitioner.fit(*self.bands(data, "train", train_index),
                             data.responses("train")[train_index])

    def predict(self, data, split: str, index: np.ndarray | None = None) -> Prediction:
        """Return the joint model's predictions, with the single-band models as parts."""
        if self.partitioner is None:
            raise RuntimeError("variance-partitioning: predict() before fit()")
        predictions = self.partitioner.predict(*self.bands(data, split, index))
        return Prediction(np.asarray(predictions["joint"], dtype=np.float32),
                          parts={"image": predictions["image"], "text": predictions["text"]})

    def derived_scores(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the ``vp_*`` maps from the runner's R^2 of the joint model and each band."""
        missing = [k for k in ("r2", "r2_image", "r2_text") if k not in scores]
        if missing:
            raise ValueError("variance-partitioning: the run's evaluation.metrics must include "
                             f"r2 (found scores {sorted(scores)}; missing {missing})")
        r2 = {"image": scores["r2_image"], "text": scores["r2_text"], "joint": scores["r2"]}
        parts = {f"r2_{name}": value for name, value in r2.items()}
        parts.update(variance_partition(r2["image"], r2["text"], r2["joint"]))
        return {f"{self.params.prefix}{k}": np.asarray(v, dtype=np.float32) for k, v in parts.items()}

    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Return ``vp_text_weight``: the joint model's text-to-image band ratio per vertex."""
        if self.partitioner is None:
            return {}
        return {f"{self.params.prefix}text_weight":
                self.partitioner.joint.best_ratio_.astype(np.float32)}


RECIPES = [
    Component("text-ridge", TextRidgeModel, TextRidgeParams,
              "caption embeddings (captioner + text encoder) -> per-vertex ridge; no pixels"),
    Component("variance-partitioning", VariancePartitioningModel, VariancePartitioningParams,
              "image + caption features; unique image / unique text / shared R^2 per vertex "
              "(banded ridge joint model)"),
]
