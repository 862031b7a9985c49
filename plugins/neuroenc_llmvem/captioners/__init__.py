"""Captioners for LLM-VEM: miniGPT-4, any transformers vision-language model, and captions
that come with the data or with a file.

``minigpt4`` (Ma et al. 2024, arXiv 2401.03851: a vision-language LLM describes every
stimulus image) is assembled from transformers modules exactly as miniGPT-4 composes them
(Zhu et al. 2023, arXiv 2304.10592; Vision-CAIR/MiniGPT-4 ``minigpt4/models/mini_gpt4.py``
and ``minigpt4/conversation/conversation.py``)::

    image ─ bicubic resize, CLIP mean/std ─► EVA-CLIP ViT-g/14 ─► ln_vision
          ─► Q-Former (32 learned query tokens, cross-attention to the image)
          ─► llama_proj: Linear(768 -> LLM hidden)  ─► 32 "image tokens"
    "###Human: <Img>" ⊕ image tokens ⊕ "</Img> Describe ... ###Assistant: " ─► LLM ─► text

The three weight sources are loaded separately: BLIP-2's frozen vision encoder and Q-Former
(``Blip2VisionModel``, ``Blip2QFormerModel`` and ``query_tokens`` read from a transformers
BLIP-2 checkpoint; its ``vision_model.post_layernorm`` *is* miniGPT-4's ``ln_vision``,
which is where transformers' BLIP-2 conversion script puts LAVIS's ``ln_vision``), the
miniGPT-4 checkpoint's ``model`` state dict (``llama_proj``, the only layer miniGPT-4
trained) and the LLM (Vicuna v0, or any causal LM with its tokenizer). The same
conversation code drives ``backend: transformers``: any ``image-text-to-text`` model
(BLIP-2, LLaVA, ...) through ``AutoProcessor`` + ``AutoModelForImageTextToText``.

The conversation follows miniGPT-4's detailed-description data generation (Zhu et al.
2023, section 3.3): the first turn asks for a detailed description; if the answer has fewer
than 80 tokens, a second turn ``Continue`` is appended and the caption is both answers.

``dataset-captions`` reads captions that ship with the data (the demo's
``demo_captions.csv``, or NSD's COCO captions through ``nsd_stim_info_merged.csv``), and
``caption-file`` a user's CSV / JSON-lines file. Wrap any of them in
:func:`neuroenc.stimuli.captions.caption_images` to cache them.

The package is split by concern: ``conversation.py`` (what the model-based captioners
share), ``minigpt4.py``, ``transformers_vlm.py``, ``dataset.py`` (captions from the data
or a file); ``_components.py`` lists the components.
"""

from ._components import COMPONENTS
from .conversation import (
                      IMAGE_SLOT,
                      MINIGPT4_DETAIL_PROMPT,
                      MINIGPT4_END_SYMBOL,
                      MINIGPT4_PROMPT_TEMPLATE,
                      Transcript,
                      render_conversation,
)
from .dataset import (
                      CaptionFileCaptioner,
                      CaptionFileParams,
                      DatasetCaptioner,
                      DatasetCaptionsParams,
                      dataset_root_of,
                      nsd_id_from_name,
)
from .minigpt4 import (
                      MiniGPT4Captioner,
                      MiniGPT4Params,
                      MiniGPT4Parts,
                      tiny_random_parts,
                      train_tiny_tokenizer,
)
from .transformers_vlm import TransformersCaptioner

__all__ = [
    "IMAGE_SLOT", "MINIGPT4_PROMPT_TEMPLATE", "MINIGPT4_DETAIL_PROMPT", "MINIGPT4_END_SYMBOL",
    "MiniGPT4Params", "MiniGPT4Captioner", "TransformersCaptioner", "Transcript", "MiniGPT4Parts",
    "render_conversation", "train_tiny_tokenizer", "tiny_random_parts",
    "DatasetCaptionsParams", "DatasetCaptioner", "CaptionFileParams", "CaptionFileCaptioner",
    "nsd_id_from_name", "dataset_root_of", "COMPONENTS",
]
