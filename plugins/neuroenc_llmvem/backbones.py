"""The EVA02 image backbone of LLM-VEM (timm), with features from several blocks.

The paper names EVA02 as the image feature extractor but not its size, layers or token
handling (REFERENCE.md section 1). Defaults follow BlobGPT (Lane & Kiar 2023), the closest
public EVA02 + PCA design: ``eva02_base_patch14_224.mim_in22k``, tokens of blocks
2, 4, 6, 8 and 10: **our assumption**, configurable. Which parameters train in which
stage is set per stage of the ``llm-vem`` recipe by name patterns over
``backbone.<parameter name>`` (e.g. ``backbone.blocks.*.attn.*``).
"""

from __future__ import annotations

from pydantic import Field

from neuroenc import Component
from neuroenc_builtins.backbones import TimmBackbone, TimmParams


class Eva02Params(TimmParams):
    model_name: str = Field("eva02_base_patch14_224.mim_in22k",
                            description="a timm EVA02 model: eva02_{tiny,small,base,large}_patch14_*")
    image_size: int | None = Field(224, ge=14)
    layers: list[int] = Field(default_factory=lambda: [2, 4, 6, 8, 10],
                              description="transformer blocks whose tokens are used")
    pooling: str = Field("cls", description="cls = class token, avg = mean of patch tokens, "
                         "all = every patch token (batch, n_tokens, channels)")


def _eva02(params: Eva02Params, context) -> TimmBackbone:
    if "eva02" not in params.model_name:
        raise ValueError(f"eva02 backbone: model_name {params.model_name!r} is not an EVA02 model; "
                         "use the 'timm' backbone for other architectures")
    if params.pooling not in ("cls", "avg", "all"):
        raise ValueError(f"eva02 backbone: pooling {params.pooling!r}; expected cls, avg or all")
    return TimmBackbone(params)


COMPONENTS = [
    Component("eva02", _eva02, Eva02Params,
              "timm EVA02 ViT; tokens (class, mean or all) from several blocks in one pass"),
]
