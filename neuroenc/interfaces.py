"""What each kind of component must provide once built (structural protocols).

Plugins need not inherit from these classes; they document the methods the pipeline
calls. Array shapes use the field's words: ``n_images``, ``n_vertices`` (lh then rh
concatenated, the challenge-space vertices of one subject), ``n_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # imported for annotations only, to keep plugin import light
    import torch
    from PIL import Image

    from neuroenc.data.algonauts import SubjectData

Split = Literal["train", "test"]


@runtime_checkable
class DatasetReader(Protocol):
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


@runtime_checkable
class EncodingModel(Protocol):
    def fit(self, data: SubjectData, train_index: np.ndarray) -> None:
        """Fit on the training images ``train_index`` (indices into the training split)."""

    def predict(self, data: SubjectData, split: Split, index: np.ndarray | None = None) -> np.ndarray:
        """Return predictions (n_images, n_vertices) for ``split`` (all images, or ``index``)."""
