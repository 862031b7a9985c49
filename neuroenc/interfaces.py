"""What each kind of component must provide once built (structural protocols).

Plugins need not inherit from these classes; they document the methods the pipeline
calls. Array shapes use the field's words: ``n_images``, ``n_vertices`` (the subject's
units: surface vertices, lh then rh, or volume voxels; see
:mod:`neuroenc.data.subject`), ``n_features``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # imported for annotations only, to keep plugin import light
    import torch
    from PIL import Image

    from neuroenc.data.subject import SubjectData

Split = Literal["train", "test"]


@runtime_checkable
class DatasetReader(Protocol):
    """Serves subjects. May also have ``resolve_subject(value) -> str``, mapping what a
    user writes in ``dataset.subjects`` (``1``, ``'01'``) to a subject id; without it
    the value is used as written."""

    def subjects(self) -> list[str]:
        """Return the subject ids this reader serves, e.g. ``['subj01', 'subj02']``."""

    def load(self, subject: str) -> SubjectData:
        """Return one subject's data, checked for consistency."""


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: Sequence[Path]) -> list[str]:
        """Return one description per image."""

    def identity(self) -> dict[str, Any]:
        """Return everything that changes the captions (for the cache key)."""


@runtime_checkable
class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return embeddings of shape (n_texts, dim)."""

    def identity(self) -> dict[str, Any]:
        """Return everything that changes the embeddings (for the cache key)."""


@runtime_checkable
class ImageBackbone(Protocol):
    module: torch.nn.Module

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Return the model input for one RGB image, shape (3, H, W)."""

    def forward_features(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{layer: features of shape (batch, dim)}`` for a batch (B, 3, H, W)."""

    def identity(self) -> dict[str, Any]:
        """Return model, weights, preprocessing, image size, layers and pooling."""


@runtime_checkable
class VoxelMapper(Protocol):
    """Maps features to every vertex's response.

    Optional, used by the ``frozen-features`` recipe when present: ``vertex_maps()``
    (per-vertex quantities learnt in ``fit``, e.g. fwrf's ``rf_x``, forwarded into the
    results) with ``vertex_map_units`` (``{name: unit}``), and ``takes_feature_maps =
    True`` for a mapper that wants each layer's ``(n_images, C, H, W)`` maps and the
    training ``rows`` instead of one concatenated matrix (``fwrf``).
    """

    def fit(self, features: np.ndarray, responses: np.ndarray) -> VoxelMapper:
        """Fit on features (n_images, n_features) and responses (n_images, n_vertices)."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return predicted responses of shape (n_images, n_vertices)."""


@runtime_checkable
class AlignmentLoss(Protocol):
    weight: float

    def __call__(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Return a scalar loss for embeddings of shape (batch, dim)."""


@runtime_checkable
class Metric(Protocol):
    def __call__(
        self, measured: np.ndarray, predicted: np.ndarray, noise_ceiling: np.ndarray | None
    ) -> np.ndarray | None:
        """Return one value per vertex, or None when the metric does not apply."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What :meth:`EncodingModel.predict` may return instead of a bare array.

    Attributes
    ----------
    responses : ndarray of shape (n_images, n_vertices)
        The model's predictions.
    parts : mapping of str to ndarray of shape (n_images, n_vertices)
        Predictions of named sub-models (e.g. a banded model's ``image`` and ``text``
        bands). The runner scores each with every metric, as ``<metric>_<part>``.
    """

    responses: np.ndarray
    parts: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, output) -> Prediction:
        """Return ``predict``'s output (an array or a Prediction) as a float32 Prediction."""
        if isinstance(output, Prediction):
            return cls(np.asarray(output.responses, dtype=np.float32),
                       {k: np.asarray(v, dtype=np.float32) for k, v in output.parts.items()})
        return cls(np.asarray(output, dtype=np.float32))


@runtime_checkable
class EncodingModel(Protocol):
    """A fitted model of one subject.

    Optional methods the runner uses when present:

    ``vertex_maps() -> dict[str, ndarray of shape (n_vertices,)]``
        Per-vertex quantities learnt from the training data (a receptive field's
        position, the chosen alpha ...), written into the results beside the scores.
    ``derived_scores(scores) -> dict[str, ndarray of shape (n_vertices,)]``
        Maps computed from the runner's per-vertex scores of the prediction and its
        parts (``{'r2': ..., 'r2_image': ...}``), e.g. variance partitions. A recipe
        never sees the measured responses of the scored images.
    ``state() -> (dict[str, ndarray], dict)`` and classmethod ``from_state(params, context,
    arrays, meta)``
        Save the fitted model into the run folder and rebuild an image predictor from it
        (:mod:`neuroenc.core.encoders`, docs/encoders.md). ``state`` may raise
        ``EncoderNotSavable(why)``; a ``not_saved_reason`` attribute explains a recipe
        without ``state``.
    """

    def fit(self, data: SubjectData, train_index: np.ndarray) -> None:
        """Fit on the training images ``train_index`` (indices into the training split)."""

    def predict(self, data: SubjectData, split: Split,
                index: np.ndarray | None = None) -> np.ndarray | Prediction:
        """Return predictions (n_images, n_vertices) for ``split`` (all images, or ``index``)."""
