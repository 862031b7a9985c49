"""The ``gaussian-head`` voxel mapper: a trainable Gaussian readout of feature maps.

Per vertex ``v`` a learned field centre ``mu_v`` (grid_sample coordinates: x right, y
**down**, both in [-1, 1] over the image, as neuralpredictors' ``FullGaussian2d``) and
size ``sigma_v`` (fraction of the image side), shared by every layer; per vertex feature
weights ``w_v`` over the concatenated channels of all layers and a bias::

    r[i, v] = b_v + w_v . [ (pool_v(phi_l[i]) - m_l) / s_l  for each layer l ]

``phi_l`` are the layer's (C, H, W) maps (backbone ``pooling: map``) or square token maps
(ViT / EVA02 patch tokens, ``pooling: all``; a few leading class / register tokens are
dropped); ``m_l, s_l`` are fixed per-channel means and standard deviations of the maps
over the training images and positions (buffers), so weights of all layers live on one
scale. Two ways to read a map at the field (``readout``):

``gaussian`` (default)
    The map is pooled by the vertex's isotropic Gaussian, density x cell area on the
    layer's grid, exactly as the fwRF (St-Yves & Naselaris 2018; neuroenc.models.fwrf)
    pools it, but with centre and size learnt by gradient descent instead of picked from a
    grid. The same at training and evaluation; ``sigma`` is the pRF size.
``point``
    Lurz et al. 2021 (ICLR; neuralpredictors ``FullGaussian2d``): each map is sampled with
    ``torch.nn.functional.grid_sample`` (bilinear) at one point per vertex; during training
    the point is drawn from N(mu, (2 sigma)^2) per image (the learned ``sigma`` is the
    positional uncertainty that lets the readout explore), at evaluation it is ``mu``.
    Cheaper; ``rf_size`` then reports that uncertainty, not a pooling size.

Measured on this machine (32 images, 4000 vertices, EfficientNet-Lite0 layers 0-3 at
16/16/16/8, forward + backward): ``gaussian`` as a matrix product over map positions 1.3 s,
``point`` 1.1 s, while Gaussian pooling by grid_sample at 9 or 16 quadrature points took
5.8 s and 10.6 s; hence the matrix product for ``gaussian``.

**Initialisation** (``init: fwrf``, default): a coarse fwRF line search
(:func:`neuroenc.models.fwrf.solve_fwrf`, ``init_sizes`` sizes, GCV) on the training
images picks each vertex's starting centre, size, weights and bias, so the untrained head
*is* that fwRF model (weights with the standardisation folded back in). Positions are the
hard part of a Gaussian readout (gradients of a small field see only its neighbourhood),
and a grid search on the training responses gives every vertex a good basin to start
from; a PCA of the responses says nothing about where a vertex looks. ``init: random``
(centres uniform on the image, size 0.1, weights 0, bias the mean response) needs no
features.

**Feature weights**: full per-vertex weights (``feature_rank: null``), or factorized into
per-vertex loadings times a shared basis, ``w_v = a_v B`` with ``B`` (rank, channels)
(initialised from the SVD of the fwRF weights).

**Shared representation** (for LLM-VEM's alignment loss): the global average of each
layer's map, standardised, concatenated, and mapped by the shared basis ``B`` when there is
one (so the alignment acts on the feature space every vertex reads out) or by its own
linear layer to ``shared_dim`` (which then only the alignment and, in a fine-tuning stage,
the backbone see).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from neuroenc import Component

#: Leading non-patch tokens (class, register) a token map may have.
MAX_PREFIX_TOKENS = 16
# Images read at a time when computing channel statistics or predicting.
_CHUNK = 128


class GaussianHeadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    readout: Literal["gaussian", "point"] = Field(
        "gaussian", description="'gaussian': pool each map by the vertex's Gaussian (fwRF "
        "pooling, learnt centre and size); 'point': Lurz et al. 2021 grid_sample at one "
        "point, jittered by the learnt sigma during training, the mean at evaluation")
    init: Literal["fwrf", "random"] = Field(
        "fwrf", description="'fwrf': start from a coarse fwRF grid search on the training "
        "images (centre, size, weights, bias); 'random': centres uniform, weights 0")
    init_sizes: int = Field(4, ge=1, description="fwrf init: candidate sizes (log-spaced)")
    init_spacing: float = Field(2.0, gt=0, description="fwrf init: centre spacing in sigmas")
    min_size: float = Field(0.02, gt=0, description="smallest sigma, fraction of the image side")
    max_size: float = Field(0.5, gt=0, description="largest sigma")
    init_min_size: float = Field(0.04, gt=0, description="fwrf init: smallest candidate sigma")
    init_max_size: float = Field(0.4, gt=0, description="fwrf init: largest candidate sigma")
    init_alphas: list[float] = Field(
        default_factory=lambda: [float(a) for a in np.logspace(-1, 7, 17)],
        description="fwrf init: ridge strengths (standardised pooled features)")
    feature_rank: int | None = Field(
        None, ge=1, description="null: full per-vertex feature weights; an int: loadings "
        "times a shared basis of this rank (also the shared representation)")
    shared_dim: int = Field(256, ge=1, description="width of the shared representation when "
                            "feature_rank is null")
    visual_field_deg: float | None = Field(
        None, gt=0, description="degrees the images span; None: the dataset's")
    # used only when the head is fitted on its own on frozen maps (fit / predict)
    epochs: int = Field(10, ge=0, description="standalone: training epochs (0: the init)")
    lr: float = Field(3e-3, gt=0, description="standalone: AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="standalone: on the feature weights")
    batch_size: int = Field(32, ge=2)
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="standalone: training images held out; each vertex keeps "
        "its parameters of the epoch (0 = the init) with the best validation MSE")

    @model_validator(mode="after")
    def _sizes(self) -> GaussianHeadParams:
        sizes = (self.min_size, self.init_min_size, self.init_max_size, self.max_size)
        if list(sizes) != sorted(sizes):
            raise ValueError(f"need min_size <= init_min_size <= init_max_size <= max_size; "
                             f"found {', '.join(map(str, sizes))}")
        return self


def map_geometry(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Return ``(channels, height, width, prefix_tokens)`` of one layer's per-image shape.

    ``(C, H, W)`` maps as they are; ``(n_tokens, C)`` token maps on a square grid after
    at most :data:`MAX_PREFIX_TOKENS` leading (class / register) tokens.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape[0], shape[1], shape[2], 0
    if len(shape) == 2:
        n_tokens, channels = shape
        side = math.isqrt(n_tokens)
        prefix = n_tokens - side * side
        if side == 0 or prefix > MAX_PREFIX_TOKENS:
            raise ValueError(f"gaussian-head: a token map of {n_tokens} tokens is not a square "
                             f"grid after at most {MAX_PREFIX_TOKENS} class / register tokens")
        return channels, side, side, prefix
    raise ValueError(f"gaussian-head: layer features of shape {shape} per image; expected "
                     "maps (channels, height, width) (backbone pooling: map) or tokens "
                     "(n_tokens, channels) (pooling: all)")


def as_maps(x, shape: Sequence[int]):
    """Return layer features (batch, *shape) as (batch, C, H, W) maps (a view where possible).

    Works on torch tensors and numpy arrays (memmaps included) alike.
    """
    channels, height, width, prefix = map_geometry(shape)
    if len(shape) == 3:
        return x
    tokens = x[:, prefix:]
    if isinstance(tokens, torch.Tensor):
        return tokens.transpose(1, 2).reshape(len(x), channels, height, width)
    return tokens.reshape(len(x), height, width, channels).transpose(0, 3, 1, 2)


def gaussian_fields(mu: torch.Tensor, sigma: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return each vertex's Gaussian on a height x width map, shape (n_vertices, H*W),
    normalised to sum to 1 (a weighted average of the map's cells).

    ``mu`` (n_vertices, 2) in grid_sample coordinates (x right, y down, [-1, 1]); ``sigma``
    (n_vertices,) in image sides. Before normalisation this is
    :func:`neuroenc.models.fwrf.gaussian_weights` (density x cell area; the same function
    in image fractions with y up). fwrf keeps the unnormalised field, which pools only the
    part of a field on the image and next to nothing for a small field between cells; it
    standardises each candidate's pooled features, so the scale does not matter there. A
    head learns one weight per channel for fields that move, and a pooled value that
    vanishes as a field shrinks or leaves the image would make those weights explode;
    normalised, a field that shrinks reads its nearest cell and one that leaves the image
    reads the edge.
    """
    xs = (torch.arange(width, dtype=mu.dtype, device=mu.device) + 0.5) / width * 2 - 1
    ys = (torch.arange(height, dtype=mu.dtype, device=mu.device) + 0.5) / height * 2 - 1
    s = 2 * sigma[:, None]  # in grid units
    # normalised per axis (the field is separable); a softmax, so that a field far smaller
    # than a cell does not underflow to zero everywhere
    gx = torch.softmax(-0.5 * ((xs[None] - mu[:, 0:1]) / s) ** 2, dim=1)  # (V, W)
    gy = torch.softmax(-0.5 * ((ys[None] - mu[:, 1:2]) / s) ** 2, dim=1)  # (V, H)
    return (gy[:, :, None] * gx[:, None, :]).reshape(len(mu), height * width)


class GaussianReadoutModule(nn.Module):
    """Layer maps -> one Gaussian field per vertex -> feature weights -> every vertex.

    ``forward(features)`` takes a list with one tensor per layer, each (batch, *shape) as
    in ``layer_shapes``, and returns ``(predictions (batch, n_vertices), shared (batch,
    shared_dim))``.
    """

    def __init__(self, layer_shapes: Sequence[Sequence[int]], n_vertices: int,
                 params: GaussianHeadParams, visual_field_deg: float | None = None):
        super().__init__()
        self.layer_shapes = [tuple(int(s) for s in shape) for shape in layer_shapes]
        self.geometry = [map_geometry(shape) for shape in self.layer_shapes]
        self.n_channels = sum(g[0] for g in self.geometry)
        self.readout = params.readout
        self.min_size, self.max_size = params.min_size, params.max_size
        self.visual_field_deg = visual_field_deg
        self.mu = nn.Parameter(torch.zeros(n_vertices, 2))
        self.log_sigma = nn.Parameter(torch.full((n_vertices,), math.log(0.1)))
        self.bias = nn.Parameter(torch.zeros(n_vertices))
        self.register_buffer("channel_mean", torch.zeros(self.n_channels))
        self.register_buffer("channel_scale", torch.ones(self.n_channels))
        self.rank = params.feature_rank
        if self.rank is None:
            self.weight = nn.Parameter(torch.zeros(n_vertices, self.n_channels))
            self.shared = nn.Linear(self.n_channels, params.shared_dim)
            self.shared_dim = params.shared_dim
        else:
            self.loadings = nn.Parameter(torch.zeros(n_vertices, self.rank))
            self.basis = nn.Parameter(torch.zeros(self.rank, self.n_channels))
            nn.init.orthogonal_(self.basis)
            self.shared_dim = self.rank

    # -- protocol used by the llm-vem recipe ---------------------------------------------
    def rebuild_meta(self) -> dict:
        """Return the keyword arguments of :meth:`GaussianHead.empty_module` for this shape."""
        return {"n_vertices": int(self.mu.shape[0]), "visual_field_deg": self.visual_field_deg}

    def frozen_parameter_names(self) -> set[str]:
        return set()

    def no_weight_decay(self) -> set[str]:
        """Parameters that weight decay must not pull to 0 (positions, sizes, biases)."""
        return {"mu", "log_sigma", "bias"}

    # -- the readout ---------------------------------------------------------------------
    @property
    def sigma(self) -> torch.Tensor:
        """Field size per vertex (fraction of the image side), within [min_size, max_size]."""
        return self.log_sigma.exp().clamp(self.min_size, self.max_size)

    @property
    def weights(self) -> torch.Tensor:
        """Per-vertex weights on the standardised channels, (n_vertices, n_channels)."""
        return self.weight if self.rank is None else self.loadings @ self.basis

    def _maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.geometry):
            raise ValueError(f"gaussian-head built for {len(self.geometry)} layers, got "
                             f"{len(features)}")
        return [as_maps(f.float(), shape) for f, shape in zip(features, self.layer_shapes)]

    def pooled(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return each vertex's standardised features, shape (batch, n_channels, n_vertices)."""
        raw = torch.cat(self._raw_pooled(features), dim=1)
        return (raw - self.channel_mean[None, :, None]) / self.channel_scale[None, :, None]

    def _raw_pooled(self, features: Sequence[torch.Tensor],
                    maps: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Return per layer each vertex's pooled (or sampled) channels, (batch, C_l, n_vertices)."""
        maps = self._maps(features) if maps is None else maps
        mu = self.mu.clamp(-1, 1)
        sigma = self.sigma
        out = []
        for x in maps:
            b, c, h, w = x.shape
            if self.readout == "gaussian":
                fields = gaussian_fields(mu, sigma, h, w)  # (V, H*W)
                out.append(x.reshape(b, c, h * w) @ fields.T)  # (B, C, V)
            else:
                grid = mu[None].expand(b, -1, -1)
                if self.training:
                    grid = grid + 2 * sigma[None, :, None] * torch.randn_like(grid)
                out.append(nn.functional.grid_sample(x, grid[:, :, None, :], mode="bilinear",
                                                     padding_mode="zeros",
                                                     align_corners=False)[..., 0])
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # The standardisation is folded into the weights ((p - m) / s . w = p . w / s - m . w / s)
        # so that the (batch, channels, vertices) tensors are not copied to standardise them.
        inv = 1.0 / self.channel_scale
        if self.rank is None:
            raw = self._raw_pooled(features)
            bounds = np.cumsum([0] + [r.shape[1] for r in raw])
            w = self.weight * inv[None]  # (V, C)
            pred = self.bias - w @ self.channel_mean
            for r, a, b in zip(raw, bounds[:-1], bounds[1:]):
                pred = pred + torch.einsum("bcv,vc->bv", r, w[:, a:b])
        else:
            # Pooling is linear, so the shared basis projects each layer's map *before* it is
            # pooled: (batch, rank, vertices) per layer instead of (batch, C_l, vertices),
            # which is what makes ViT layers of 768 channels and 40,000 vertices fit.
            basis = self.basis * inv[None]  # (R, C)
            maps = self._maps(features)
            bounds = np.cumsum([0] + [m.shape[1] for m in maps])
            projected = [torch.einsum("bchw,rc->brhw", m, basis[:, a:b])
                         for m, a, b in zip(maps, bounds[:-1], bounds[1:])]
            z = sum(self._raw_pooled(None, projected))
            z = z - (basis @ self.channel_mean)[None, :, None]
            pred = torch.einsum("brv,vr->bv", z, self.loadings) + self.bias
        gap = torch.cat([m.mean(dim=(2, 3)) for m in self._maps(features)], dim=1)
        gap = (gap - self.channel_mean) / self.channel_scale
        shared = self.shared(gap) if self.rank is None else gap @ self.basis.T
        return pred, shared

    # -- what it learnt ------------------------------------------------------------------
    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Return ``rf_x``, ``rf_y`` (x right, y up, origin at the image centre), ``rf_size``,
        ``rf_angle``, ``rf_eccentricity``: degrees where the visual field is known, else image
        fractions (as the fwrf mapper's)."""
        from neuroenc.viz.retinotopy import polar_coordinates

        with torch.no_grad():
            mu = self.mu.clamp(-1, 1).detach().cpu().double().numpy()
            sigma = self.sigma.detach().cpu().double().numpy()
        scale = self.visual_field_deg or 1.0
        x, y, size = mu[:, 0] / 2 * scale, -mu[:, 1] / 2 * scale, sigma * scale
        angle, eccentricity = polar_coordinates(x, y)
        return {"rf_x": x, "rf_y": y, "rf_size": size, "rf_angle": angle,
                "rf_eccentricity": eccentricity}

    @property
    def vertex_map_units(self) -> dict[str, str]:
        length = "deg" if self.visual_field_deg else "image fraction"
        return {"rf_x": length, "rf_y": length, "rf_size": length, "rf_eccentricity": length,
                "rf_angle": "deg"}


def channel_statistics(maps: Sequence, rows: np.ndarray, max_images: int = 512,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return per-channel mean and standard deviation of maps (n, C, H, W) over up to
    ``max_images`` of ``rows`` and all positions, layers concatenated."""
    rows = np.asarray(rows)
    if len(rows) > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    means, scales = [], []
    for m in maps:
        s1 = np.zeros(m.shape[1])
        s2 = np.zeros(m.shape[1])
        for start in range(0, len(rows), _CHUNK):
            block = np.asarray(m[rows[start:start + _CHUNK]], dtype=np.float64)
            s1 += block.sum(axis=(0, 2, 3))
            s2 += np.square(block).sum(axis=(0, 2, 3))
        n = len(rows) * m.shape[2] * m.shape[3]
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0))
        std[std == 0] = 1.0
        means.append(mean)
        scales.append(std)
    return np.concatenate(means).astype(np.float32), np.concatenate(scales).astype(np.float32)


def initialise_from_fwrf(module: GaussianReadoutModule, maps: Sequence, responses: np.ndarray,
                         rows: np.ndarray, params: GaussianHeadParams, device: str = "cpu") -> np.ndarray:
    """Set centres, sizes, weights and bias of ``module`` from a coarse fwRF search; return
    the fwRF's per-vertex GCV score (training images ``rows`` only)."""
    from neuroenc.models.fwrf import candidate_grid, gaussian_weights, solve_fwrf

    candidates = candidate_grid(params.init_sizes, params.init_min_size, params.init_max_size,
                                params.init_spacing)
    result = solve_fwrf(list(maps), responses, candidates, np.asarray(params.init_alphas),
                        rows=rows, device=device)
    # fwrf pools with unnormalised fields, the head with normalised ones (gaussian_fields):
    # fwrf's pooled value of a layer = the field's mass on that layer x the head's
    mass = []
    chosen = result.candidates[result.best_candidate]
    for m in maps:
        w = gaussian_weights(chosen, m.shape[2], m.shape[3]).sum(1)  # (V,)
        mass.append(np.repeat(w[:, None], m.shape[1], axis=1))
    mass = np.concatenate(mass, axis=1)  # (V, C)
    with torch.no_grad():
        # fwrf: x right, y up, image fractions -> grid_sample: x right, y down, [-1, 1]
        mu = np.stack([2 * result.rf_x, -2 * result.rf_y], axis=1)
        module.mu.copy_(torch.as_tensor(mu, dtype=torch.float32))
        module.log_sigma.copy_(torch.as_tensor(np.log(result.rf_size), dtype=torch.float32))
        # coef is on the raw pooled features; the module standardises them per channel
        coef = torch.as_tensor(result.coef.T * mass, dtype=torch.float32)  # (V, C)
        weights = coef * module.channel_scale[None]
        if module.readout == "point":
            # the fwRF weights belong to Gaussian pooling; a point sample of a map has another
            # scale (no averaging), so the point readout starts from its position and size
            # only, with zero weights and the mean response as bias
            return result.cv_score
        bias = torch.as_tensor(result.intercept, dtype=torch.float32) + coef @ module.channel_mean
        module.bias.copy_(bias)
        if module.rank is None:
            module.weight.copy_(weights)
        else:
            u, s, vt = torch.linalg.svd(weights, full_matrices=False)
            r = min(module.rank, len(s))
            module.loadings.zero_()
            module.loadings[:, :r].copy_(u[:, :r] * s[:r])
            module.basis[:r].copy_(vt[:r])
    return result.cv_score


class GaussianHead:
    """The ``gaussian-head`` voxel mapper: a trainable module, or fitted alone on frozen maps."""

    #: The frozen-features recipe passes ``{layer: (n_images, C, H, W)}`` maps and rows.
    takes_feature_maps = True
    #: The llm-vem recipe passes the training features to build_module (for the fwRF init).
    init_from_features = True

    def __init__(self, params: GaussianHeadParams, context):
        self.params = params
        self.context = context
        self.module: GaussianReadoutModule | None = None
        self.init_cv_score: np.ndarray | None = None
        self.validation_r2: np.ndarray | None = None
        self.history: list[dict] = []

    def build_module(self, layer_shapes: Sequence[Sequence[int]], responses: np.ndarray,
                     hemisphere_sizes: Sequence[int] | None = None, *,
                     features: Sequence[np.ndarray] | None = None, rows: np.ndarray | None = None,
                     visual_field_deg: float | None = None) -> GaussianReadoutModule:
        """Return a new head for ``responses`` (n_fit, n_vertices) of the images ``rows`` of
        ``features`` (one array (n_images, *shape) per layer; needed for ``init: fwrf``)."""
        p = self.params
        responses = np.asarray(responses, np.float32)
        module = GaussianReadoutModule(layer_shapes, responses.shape[1], p,
                                       p.visual_field_deg or visual_field_deg)
        rng = np.random.default_rng(self.context.seed)
        if features is None:
            if p.init == "fwrf":
                raise ValueError("gaussian-head: init 'fwrf' needs the training features; the "
                                 "caller gave none (use init: random)")
        else:
            if len(features) != len(module.layer_shapes):
                raise ValueError(f"gaussian-head: {len(features)} feature arrays for "
                                 f"{len(module.layer_shapes)} layers")
            rows = np.arange(len(responses)) if rows is None else np.asarray(rows)
            if len(rows) != len(responses):
                raise ValueError(f"gaussian-head: {len(rows)} rows but {len(responses)} responses")
            maps = [as_maps(f, shape) for f, shape in zip(features, module.layer_shapes)]
            mean, scale = channel_statistics(maps, rows, seed=self.context.seed)
            module.channel_mean.copy_(torch.from_numpy(mean))
            module.channel_scale.copy_(torch.from_numpy(scale))
        with torch.no_grad():
            module.bias.copy_(torch.from_numpy(responses.mean(0)))
            if p.init == "random":
                module.mu.copy_(torch.from_numpy(rng.uniform(-1, 1, (responses.shape[1], 2))
                                                 .astype(np.float32)))
        if p.init == "fwrf":
            self.init_cv_score = initialise_from_fwrf(module, maps, responses, rows, p,
                                                      device=self.context.device)
        return module

    def empty_module(self, layer_shapes: Sequence[Sequence[int]], n_vertices: int,
                     visual_field_deg: float | None = None) -> GaussianReadoutModule:
        """Return a head of the given shape (to load a saved state into)."""
        return GaussianReadoutModule(layer_shapes, n_vertices, self.params, visual_field_deg)

    # -- VoxelMapper protocol: fitted on its own on frozen maps ---------------------------
    def fit(self, features: Mapping[str, np.ndarray], responses: np.ndarray, *,
            rows: np.ndarray | None = None, visual_field_deg: float | None = None) -> GaussianHead:
        """Fit on maps ``{layer: (n_images, *shape)}`` (images ``rows``) and responses
        (n_fit, n_vertices): the init, then AdamW on MSE; each vertex keeps the parameters
        of the epoch with the lowest MSE on a held-out part of the rows."""
        p = self.params
        layers = list(features.values())
        self.layers = list(features)
        shapes = [tuple(f.shape[1:]) for f in layers]
        n_all = len(layers[0])
        rows = np.arange(n_all) if rows is None else np.asarray(rows)
        Y = np.asarray(responses, np.float32)
        if len(rows) != len(Y):
            raise ValueError(f"gaussian-head: {len(rows)} training rows but {len(Y)} response rows")
        rng = np.random.default_rng(self.context.seed)
        perm = rng.permutation(len(rows))
        n_val = max(2, int(round(p.validation_fraction * len(rows))))
        val, fit = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        torch.manual_seed(self.context.seed)
        module = self.build_module(shapes, Y[fit], features=layers, rows=rows[fit],
                                   visual_field_deg=visual_field_deg).to(self.context.device)
        self.module = module
        # Vertices are independent with full weights, so each keeps its own best epoch; with
        # a shared basis the whole head keeps the epoch with the best mean validation MSE.
        if module.rank is None:
            per_vertex = ["mu", "log_sigma", "bias", "weight"]
        else:
            per_vertex = []
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        best = {n: getattr(module, n).detach().clone() for n in per_vertex}
        best_mse = self._mse(layers, rows[val], Y[val])
        self.history = [{"epoch": 0, "validation_mse": float(best_mse.mean())}]
        if p.epochs == 0:
            module.eval()
            self.validation_r2 = 1 - best_mse / np.maximum(Y[val].var(0), 1e-12)
            return self
        decay = [q for n, q in module.named_parameters() if n not in module.no_weight_decay()]
        other = [q for n, q in module.named_parameters() if n in module.no_weight_decay()]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                                 {"params": other, "weight_decay": 0.0}], lr=p.lr)
        steps = p.epochs * max(1, len(fit) // p.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(self.context.seed)
        targets = torch.from_numpy(Y[fit])
        for epoch in range(1, p.epochs + 1):
            module.train()
            order = torch.randperm(len(fit), generator=gen).split(p.batch_size)
            total = 0.0
            for idx in order:
                if len(idx) < 2:
                    continue
                idx = np.sort(idx.numpy())
                x = self._batch(layers, rows[fit][idx])
                pred, _ = module(x)
                loss = nn.functional.mse_loss(pred, targets[idx].to(pred.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            mse = self._mse(layers, rows[val], Y[val])
            if per_vertex:
                better = torch.from_numpy(mse < best_mse)
                with torch.no_grad():
                    for n in per_vertex:
                        best[n][better] = getattr(module, n).detach()[better]
                best_mse = np.minimum(best_mse, mse)
            else:
                better = torch.as_tensor(np.full(len(mse), mse.mean() < best_mse.mean()))
                if mse.mean() < best_mse.mean():
                    best_mse = mse
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.history.append({"epoch": epoch, "train_mse": total / len(fit),
                                 "validation_mse": float(mse.mean()),
                                 "vertices_improved": int(better.sum())})
        with torch.no_grad():
            for n in per_vertex:
                getattr(module, n).copy_(best[n])
        if not per_vertex:
            module.load_state_dict(best_state)
        module.eval()
        self.validation_r2 = 1 - best_mse / np.maximum(Y[val].var(0), 1e-12)
        return self

    def _batch(self, layers, index: np.ndarray) -> list[torch.Tensor]:
        device = self.context.device
        return [torch.from_numpy(np.asarray(f[index], dtype=np.float32)).to(device) for f in layers]

    def _predict_rows(self, layers, index: np.ndarray) -> np.ndarray:
        out = []
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, len(index), _CHUNK):
                out.append(self.module(self._batch(layers, index[start:start + _CHUNK]))[0].cpu())
        return torch.cat(out).numpy()

    def _mse(self, layers, index: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return np.square(self._predict_rows(layers, index) - Y).mean(0)

    def predict(self, features: Mapping[str, np.ndarray], *,
                rows: np.ndarray | None = None) -> np.ndarray:
        """Return predictions (n_images, n_vertices) for maps ``{layer: (n_images, *shape)}``."""
        if self.module is None:
            raise RuntimeError("gaussian-head: predict() before fit()")
        if list(features) != self.layers:
            raise ValueError(f"gaussian-head: layers {list(features)} given, fitted on {self.layers}")
        layers = list(features.values())
        rows = np.arange(len(layers[0])) if rows is None else np.asarray(rows)
        return self._predict_rows(layers, rows)

    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Return the fields (:meth:`GaussianReadoutModule.vertex_maps`), the fwRF init's GCV
        score ``rf_init_cv_score`` and the held-out R^2 of the kept parameters ``rf_val_r2``."""
        if self.module is None:
            return {}
        maps = self.module.vertex_maps()
        if self.init_cv_score is not None:
            maps["rf_init_cv_score"] = self.init_cv_score
        if self.validation_r2 is not None:
            maps["rf_val_r2"] = self.validation_r2
        return maps

    @property
    def vertex_map_units(self) -> dict[str, str]:
        return self.module.vertex_map_units if self.module is not None else {}


COMPONENTS = [
    Component("gaussian-head", GaussianHead, GaussianHeadParams,
              "trainable Gaussian readout: per vertex a learnt field centre and size on every "
              "layer's map (fwRF-initialised) and feature weights (Lurz et al. 2021)"),
]
