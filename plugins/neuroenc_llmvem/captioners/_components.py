"""The captioner components of the plugin."""

from __future__ import annotations

from neuroenc import Component

from .dataset import (
    CaptionFileCaptioner,
    CaptionFileParams,
    DatasetCaptioner,
    DatasetCaptionsParams,
)
from .minigpt4 import MiniGPT4Params
from .transformers_vlm import _minigpt4

COMPONENTS = [
    Component("minigpt4", _minigpt4, MiniGPT4Params,
              "miniGPT-4 (BLIP-2 ViT-g + Q-Former, llama_proj, Vicuna) or any transformers "
              "image-text-to-text model; detailed description + Continue"),
    Component("dataset-captions",
              lambda params, context: DatasetCaptioner(params, context.base_dir),
              DatasetCaptionsParams,
              "captions shipped with the data: the demo's, or NSD's COCO captions"),
    Component("caption-file",
              lambda params, context: CaptionFileCaptioner(params, context.base_dir),
              CaptionFileParams, "captions from a CSV / JSON-lines file (by file name or NSD id)"),
]
