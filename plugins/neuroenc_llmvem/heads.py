"""The PCA voxel-mapping head of LLM-VEM.

The paper says only that voxel mapping is "PCA-based" (REFERENCE.md section 1). We follow
the closest public design, BlobGPT (Lane & Kiar 2023): per backbone layer, features ->
dropout -> a low-rank linear map -> BatchNorm; the layers are averaged into one shared
representation; a linear layer predicts PCA coefficients; a final linear layer,
initialised from a PCA of the training fMRI (weight = components, bias = mean) and
frozen by default, maps them back to every vertex. Sizes are **our assumption**
(BlobGPT's: low rank 1024, 2048 components), configurable.

Token maps of shape (batch, n_tokens, channels) (backbone ``pooling: all``), and a CNN's
feature maps (batch, channels, height, width) (``pooling: map``, each position a token),
first go through a token-wise linear reduction to ``token_channels`` and are then
flattened, so the low-rank layer sees where each feature is; the paper's token handling
is unknown, this keeps the low-rank layer small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from neuroenc import Component


class PCAHeadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_components: int = Field(2048, ge=1, description="PCA components (capped at min(n_images, "
                              "n_vertices)); the head predicts these coefficients")
    low_rank: int = Field(1024, ge=1, description="width of the per-layer low-rank map")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on each layer's features")
    token_channels: int = Field(16, ge=1, description="channels kept per token for token maps")
    scope: Literal["both", "hemisphere"] = Field(
        "both", description="one PCA over both hemispheres, or one per hemisphere")
    freeze_pca: bool = Field(True, description="keep the PCA output layer fixed")
    # used only when the head is fitted on its own on frozen features (fit / predict)
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(64, ge=2)


def pca_basis(responses: np.ndarray, n_components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(components (k, n_vertices), mean (n_vertices,))`` of training responses."""
    from sklearn.decomposition import PCA

    n_images, n_vertices = responses.shape
    k = min(n_components, n_images, n_vertices)
    pca = PCA(n_components=k, svd_solver="auto", random_state=seed).fit(responses)
    return pca.components_.astype(np.float32), pca.mean_.astype(np.float32)


class _LayerMap(nn.Module):
    def __init__(self, shape: Sequence[int], params: PCAHeadParams):
        super().__init__()
        self.channels_first = len(shape) == 3  # a CNN's (channels, height, width) map
        if self.channels_first:
            shape = (shape[1] * shape[2], shape[0])  # its positions as tokens
        if len(shape) == 2:  # (n_tokens, channels)
            self.tokens = nn.Linear(shape[1], params.token_channels)
            in_dim = shape[0] * params.token_channels
        elif len(shape) == 1:
            self.tokens = None
            in_dim = shape[0]
        else:
            raise ValueError(f"layer features of shape {tuple(shape)} per image; expected (dim,), "
                             "(n_tokens, channels) or (channels, height, width)")
        self.dropout = nn.Dropout(params.dropout)
        self.low_rank = nn.Linear(in_dim, params.low_rank)
        self.norm = nn.BatchNorm1d(params.low_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            x = x.flatten(2).transpose(1, 2)  # (batch, C, H, W) -> (batch, H*W, C)
        if self.tokens is not None:
            x = self.tokens(x).flatten(1)
        return self.norm(self.low_rank(self.dropout(x)))


class PCAHeadModule(nn.Module):
    """Layer features -> shared representation -> PCA coefficients -> every vertex.

    ``forward(features)`` takes a list with one tensor per layer, each (batch, *shape)
    and returns ``(predictions (batch, n_vertices), shared (batch, low_rank))``; the
    shared representation is what an alignment loss projects to the text space.
    """

    def __init__(self, layer_shapes: Sequence[Sequence[int]], components: np.ndarray,
                 mean: np.ndarray, params: PCAHeadParams):
        super().__init__()
        self.layers = nn.ModuleList(_LayerMap(shape, params) for shape in layer_shapes)
        k, n_vertices = components.shape
        self.coefficients = nn.Linear(params.low_rank, k)
        self.pca = nn.Linear(k, n_vertices)
        with torch.no_grad():
            self.pca.weight.copy_(torch.from_numpy(components.T))
            self.pca.bias.copy_(torch.from_numpy(mean))
        self.pca.requires_grad_(not params.freeze_pca)
        self.shared_dim = params.low_rank
        self.freeze_pca = params.freeze_pca

    def rebuild_meta(self) -> dict:
        """Return the keyword arguments of :meth:`PCAHead.empty_module` for this shape."""
        n_vertices, k = self.pca.weight.shape
        return {"n_components": int(k), "n_vertices": int(n_vertices)}

    def frozen_parameter_names(self) -> set[str]:
        """Parameters no training stage updates: the PCA layer, unless ``freeze_pca`` is off."""
        return {"pca.weight", "pca.bias"} if self.freeze_pca else set()

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(features) != len(self.layers):
            raise ValueError(f"head built for {len(self.layers)} layers, got {len(features)}")
        shared = torch.stack([layer(f.float()) for layer, f in zip(self.layers, features)]).mean(0)
        return self.pca(self.coefficients(shared)), shared


def _block_pca(responses: np.ndarray, hemisphere_sizes: Sequence[int], params: PCAHeadParams,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    if params.scope == "both":
        return pca_basis(responses, params.n_components, seed)
    # one PCA per hemisphere, stacked block-diagonally: coefficients of lh, then of rh
    blocks, means, start = [], [], 0
    n_total = responses.shape[1]
    per_hemi = max(1, params.n_components // len(hemisphere_sizes))
    for size in hemisphere_sizes:
        comp, mean = pca_basis(responses[:, start:start + size], per_hemi, seed)
        full = np.zeros((comp.shape[0], n_total), np.float32)
        full[:, start:start + size] = comp
        blocks.append(full)
        means.append(mean)
        start += size
    return np.concatenate(blocks), np.concatenate(means)


class PCAHead:
    """The ``pca-head`` voxel mapper: a trainable module, or fitted alone on features."""

    def __init__(self, params: PCAHeadParams, context):
        self.params = params
        self.context = context
        self.module: PCAHeadModule | None = None

    def build_module(self, layer_shapes: Sequence[Sequence[int]], responses: np.ndarray,
                     hemisphere_sizes: Sequence[int] | None = None) -> PCAHeadModule:
        """Return a new head whose PCA layer is fitted on ``responses`` (n_images, n_vertices)."""
        sizes = hemisphere_sizes or [responses.shape[1]]
        if sum(sizes) != responses.shape[1]:
            raise ValueError(f"hemisphere sizes {list(sizes)} do not add up to the "
                             f"{responses.shape[1]} vertices of the responses")
        components, mean = _block_pca(np.asarray(responses, np.float32), sizes, self.params,
                                      self.context.seed)
        return PCAHeadModule(layer_shapes, components, mean, self.params)

    def empty_module(self, layer_shapes: Sequence[Sequence[int]], n_components: int,
                     n_vertices: int) -> PCAHeadModule:
        """Return a head of the given shape with a zero PCA layer (to load a saved state into)."""
        return PCAHeadModule(layer_shapes, np.zeros((n_components, n_vertices), np.float32),
                             np.zeros(n_vertices, np.float32), self.params)

    # -- VoxelMapper protocol: fitted on its own on frozen features --------------------
    def fit(self, features: np.ndarray, responses: np.ndarray) -> PCAHead:
        """Train the head by AdamW on MSE; features (n_images, n_features)."""
        torch.manual_seed(self.context.seed)
        X = torch.as_tensor(np.asarray(features, np.float32))
        Y = torch.as_tensor(np.asarray(responses, np.float32))
        if len(X) != len(Y):
            raise ValueError(f"{len(X)} feature rows but {len(Y)} response rows")
        self.module = self.build_module([X.shape[1:]], Y.numpy())
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=self.params.lr, weight_decay=self.params.weight_decay)
        gen = torch.Generator().manual_seed(self.context.seed)
        self.module.train()
        for _ in range(self.params.epochs):
            for idx in torch.randperm(len(X), generator=gen).split(self.params.batch_size):
                if len(idx) < 2:
                    continue  # BatchNorm needs two samples
                pred, _ = self.module([X[idx]])
                loss = nn.functional.mse_loss(pred, Y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.module.eval()
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.module is None:
            raise RuntimeError("pca-head: predict() before fit()")
        with torch.inference_mode():
            pred, _ = self.module([torch.as_tensor(np.asarray(features, np.float32))])
        return pred.numpy()


COMPONENTS = [
    Component("pca-head", PCAHead, PCAHeadParams,
              "low-rank layer maps -> PCA coefficients -> frozen PCA layer to every vertex"),
]
