"""Model recipes: how components compose into an encoding model."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neuroenc import Component
from neuroenc.core.config import BackboneRef, ComponentRef, MapperRef
from neuroenc.stimuli.features import extract_features


class FrozenFeaturesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneRef = Field(..., description="image backbone (its layers are concatenated)")
    mapper: MapperRef = Field(default_factory=lambda: ComponentRef(name="ridge"),
                              description="voxel mapper fitted on the frozen features")


class FrozenFeaturesModel:
    """Features of a frozen backbone (cached) -> a voxel mapper fitted per subject."""

    def __init__(self, params: FrozenFeaturesParams, context):
        self.params = params
        self.context = context
        self.backbone = context.build("image_backbone", params.backbone)
        self.mapper = context.build("voxel_mapper", params.mapper)
        self._features: dict[tuple[str, str], np.ndarray] = {}

    def features(self, data, split: str) -> np.ndarray:
        """Return the concatenated layer features of a split, shape (n_images, n_features).

        For a mapper that ``takes_feature_maps`` (``fwrf``): ``{layer: (n_images, C, H, W)}``,
        each layer's memory-mapped maps as cached, not concatenated.
        """
        if (data.subject, split) in self._features:  # fit and predict both need the train split
            return self._features[data.subject, split]
        images = data.train_images if split == "train" else data.test_images
        layers = extract_features(self.backbone, images, self.context,
                                  description=f"{data.subject} {split} features")
        shapes = {name: tuple(f.shape[1:]) for name, f in layers.items()}
        is_map = [len(shape) == 3 for shape in shapes.values()]
        if self._maps and not all(is_map):
            raise ValueError(f"the {type(self.mapper).__name__} mapper needs feature maps "
                             f"(channels, height, width) per layer, but the backbone gave "
                             f"{shapes}; use a backbone with pooling: map")
        if not self._maps and any(is_map):
            raise ValueError(f"the backbone gives feature maps {shapes} (pooling: map), but "
                             f"the {type(self.mapper).__name__} mapper takes vectors; use "
                             "pooling avg / grid, or the fwrf mapper")
        if self._maps:
            features = dict(layers)
        else:
            features = np.concatenate([np.asarray(f, dtype=np.float32) for f in layers.values()],
                                      axis=1)
        self._features[data.subject, split] = features
        return features

    @property
    def _maps(self) -> bool:
        return bool(getattr(self.mapper, "takes_feature_maps", False))

    def fit(self, data, train_index: np.ndarray) -> None:
        responses = data.responses("train")[train_index]
        if self._maps:  # rows instead of a copy of the (memory-mapped) maps
            self.mapper.fit(self.features(data, "train"), responses, rows=train_index,
                            visual_field_deg=data.metadata.get("visual_field_deg"))
            return
        features = self.features(data, "train")[train_index]
        self.mapper.fit(features, responses)

    def predict(self, data, split: str, index: np.ndarray | None = None) -> np.ndarray:
        features = self.features(data, split)
        if self._maps:
            return np.asarray(self.mapper.predict(features, rows=index), dtype=np.float32)
        if index is not None:
            features = features[index]
        return np.asarray(self.mapper.predict(features), dtype=np.float32)

    def vertex_maps(self) -> dict[str, np.ndarray]:
        """Return the mapper's per-vertex quantities learnt from the training data, if any."""
        maps = getattr(self.mapper, "vertex_maps", None)
        return dict(maps()) if maps is not None else {}

    @property
    def vertex_map_units(self) -> dict[str, str]:
        return dict(getattr(self.mapper, "vertex_map_units", None) or {})
    # A saved encoder (neuroenc.core.encoders): the mapper's linear weights; the backbone is
    # rebuilt from its config and checked against the digest of its weights.
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Return the fitted readout's arrays and what identifies the backbone."""
        from neuroenc.core.encoders import EncoderNotSavable, backbone_record

        coef, intercept = getattr(self.mapper, "coef_", None), getattr(self.mapper, "intercept_", None)
        if coef is None or intercept is None:
            raise EncoderNotSavable(f"voxel mapper {self.params.mapper.name!r} has no linear "
                                    "weights (coef_, intercept_) to save")
        arrays = {"coef": coef, "intercept": intercept}
        for name, attr in (("best_alphas", "best_alphas_"), ("x_mean", "x_mean_"),
                           ("x_scale", "x_scale_")):
            if getattr(self.mapper, attr, None) is not None:
                arrays[name] = np.asarray(getattr(self.mapper, attr))
        return arrays, {"readout": "linear",
                        "backbone": backbone_record(self.params.backbone, self.backbone)}

    @classmethod
    def from_state(cls, params: FrozenFeaturesParams, context, arrays: dict, meta: dict):
        """Return an image predictor rebuilt from :meth:`state` (the backbone from its config)."""
        from neuroenc.core.encoders import LinearReadout

        backbone = context.build("image_backbone", params.backbone)
        return LinearReadout(backbone, arrays["coef"], arrays["intercept"], device=context.device)


COMPONENTS = [
    Component("frozen-features", FrozenFeaturesModel, FrozenFeaturesParams,
              "frozen image backbone features -> voxel mapper (e.g. the ridge baseline)"),
]
