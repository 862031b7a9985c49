"""``backend: transformers``: any image-text-to-text model of transformers through the same conversation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch / transformers are imported when a captioner runs, not on plugin load
    from PIL import Image
from .conversation import (
    IMAGE_SLOT,
    _ConversationCaptioner,
    _dtype_kwargs,
    _resolve_source,
)
from .minigpt4 import MiniGPT4Captioner, MiniGPT4Params

# --------------------------------------------------------------------------------------
# Backend transformers: any image-text-to-text model
# --------------------------------------------------------------------------------------

class TransformersCaptioner(_ConversationCaptioner):
    """Any transformers image-text-to-text model with miniGPT-4's conversation.

    ``AutoProcessor`` + ``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` on
    transformers < 4.46). With ``prompt_template`` the ``<ImageHere>`` slot becomes the
    processor's image token (``image_token``); with ``use_chat_template`` each turn goes
    through the processor's chat template, the image first.
    """

    def __init__(self, params: MiniGPT4Params, *, device: str = "cpu", seed: int = 0,
                 base_dir: Path = Path(".")):
        super().__init__(params, device=device, seed=seed, base_dir=base_dir)
        self.source = _resolve_source(params.model, params.model_revision, self.base_dir, "model")
        self.processor = self.model = None
        self.image_token: str = ""

    def _load(self) -> None:
        import torch
        from transformers import AutoProcessor

        try:
            from transformers import AutoModelForImageTextToText as AutoModel
        except ImportError:  # transformers < 4.46
            from transformers import AutoModelForVision2Seq as AutoModel

        dtype = getattr(torch, self.dtype_name)
        self.processor = AutoProcessor.from_pretrained(self.source.location,
                                                       revision=self.source.revision)
        self.model = AutoModel.from_pretrained(self.source.location, revision=self.source.revision,
                                               **_dtype_kwargs(dtype)).to(self.device).eval()
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # decoder-only LMs continue on the right
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if self.params.image_token is not None:
            self.image_token = self.params.image_token
        elif getattr(self.processor, "num_query_tokens", None) is not None:
            self.image_token = ""  # BLIP-2-style processors prepend the image tokens themselves
        else:
            token = getattr(self.processor, "image_token", None)
            if token is None and not self.params.use_chat_template:
                raise ValueError(f"model {self.source.location}: its processor "
                                 f"({type(self.processor).__name__}) names no image token; set "
                                 "image_token (the text that stands for the image in the prompt) "
                                 "or use_chat_template: true")
            self.image_token = str(token or "")

    def _render(self, user_turns: Sequence[str], answers: Sequence[str]) -> str:
        if not self.params.use_chat_template:
            return super()._render(user_turns, answers)
        self.load()
        messages = []
        for i, turn in enumerate(user_turns):
            if IMAGE_SLOT in turn:
                # miniGPT-4's <Img>...</Img> wrapper is its own markup; chat templates place
                # the image themselves
                text = turn.replace(f"<Img>{IMAGE_SLOT}</Img>", "").replace(IMAGE_SLOT, "").strip()
                content = [{"type": "image"}, {"type": "text", "text": text}]
            else:
                content = [{"type": "text", "text": turn}]
            messages.append({"role": "user", "content": content})
            if i < len(answers):
                messages.append({"role": "assistant",
                                 "content": [{"type": "text", "text": answers[i]}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def _generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        import torch

        texts = [p.replace(IMAGE_SLOT, self.image_token) for p in prompts]
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        dtype = getattr(torch, self.dtype_name)
        inputs = {k: (v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        kwargs = self._generation_kwargs()
        tokenizer = self.processor.tokenizer
        if self.params.end_symbol:
            kwargs.update(stop_strings=[self.params.end_symbol], tokenizer=tokenizer)
        out = self.model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **kwargs)
        prompt_ids = inputs.get("input_ids")
        # Decoder-only models return prompt + continuation, encoder-decoders the continuation
        # only, and some wrappers (BLIP-2) changed between versions: strip the prompt when the
        # output starts with it.
        if (prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1]
                and torch.equal(out[:, :prompt_ids.shape[1]], prompt_ids)):
            out = out[:, prompt_ids.shape[1]:]
        return self.processor.batch_decode(out, skip_special_tokens=True)

    def _count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False).input_ids)

    def _model_identity(self) -> dict[str, Any]:
        return {"model": self.source.identity(), "image_token": self.params.image_token,
                "use_chat_template": self.params.use_chat_template}


def _minigpt4(params: MiniGPT4Params, context) -> _ConversationCaptioner:
    cls = MiniGPT4Captioner if params.backend == "minigpt4" else TransformersCaptioner
    return cls(params, device=context.device, seed=context.seed, base_dir=context.base_dir)
