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
:func:`neuroenc.captions.caption_images` to cache them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neuroenc import Component

if TYPE_CHECKING:  # torch / transformers are imported when a captioner runs, not on plugin load
    import torch
    from PIL import Image

__all__ = [
    "IMAGE_SLOT", "MINIGPT4_PROMPT_TEMPLATE", "MINIGPT4_DETAIL_PROMPT", "MINIGPT4_END_SYMBOL",
    "MiniGPT4Params", "MiniGPT4Captioner", "TransformersCaptioner", "Transcript", "MiniGPT4Parts",
    "render_conversation", "train_tiny_tokenizer", "tiny_random_parts",
    "DatasetCaptionsParams", "DatasetCaptioner", "CaptionFileParams", "CaptionFileCaptioner",
    "nsd_id_from_name", "dataset_root_of", "COMPONENTS",
]

#: Where the image's embeddings go in a prompt (miniGPT-4's placeholder).
IMAGE_SLOT = "<ImageHere>"
#: miniGPT-4's Vicuna conversation template (``prompt_template`` of its eval config).
MINIGPT4_PROMPT_TEMPLATE = "###Human: {} ###Assistant: "
#: miniGPT-4's detailed-description request (Zhu et al. 2023, section 3.3).
MINIGPT4_DETAIL_PROMPT = ("<Img><ImageHere></Img> Describe this image in detail. Give as many "
                          "details as possible. Say everything you see.")
#: miniGPT-4's stop string (``end_sym``): Vicuna v0 opens each turn with it.
MINIGPT4_END_SYMBOL = "###"
#: BLIP-2's image normalisation (LAVIS ``Blip2ImageEvalProcessor``: OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_NSD_ID = re.compile(r"nsd-(\d+)")
_SUBJECT_DIR = re.compile(r"subj\d+")


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------

class MiniGPT4Params(BaseModel):
    """Parameters of the ``minigpt4`` captioner (the YAML keys)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["minigpt4", "transformers"] = Field(
        "minigpt4", description="'minigpt4': BLIP-2 vision encoder + Q-Former, llama_proj and an "
        "LLM assembled as miniGPT-4 does; 'transformers': any image-text-to-text model (model:)")
    # -- backend minigpt4: three weight sources --------------------------------------------
    blip2_model: str = Field(
        "Salesforce/blip2-flan-t5-xxl", description="transformers BLIP-2 checkpoint (hub id or "
        "local folder); only its vision_model, qformer and query_tokens are read")
    blip2_revision: str | None = Field(None, description="hub revision of blip2_model; pin a "
                                       "commit hash so that the caption cache key is exact")
    minigpt4_checkpoint: str | None = Field(
        None, description="miniGPT-4 checkpoint file (e.g. prerained_minigpt4_7b.pth) whose "
        "'model' state dict holds llama_proj; required unless tiny_random")
    llm: str | None = Field(
        None, description="the LLM miniGPT-4 was trained with (hub id or local folder with "
        "weights and tokenizer), e.g. Vicuna v0 7B; required unless tiny_random")
    llm_revision: str | None = Field(None, description="hub revision of llm")
    # -- backend transformers ---------------------------------------------------------------
    model: str | None = Field(None, description="backend transformers: image-text-to-text model "
                              "id or local folder (BLIP-2, LLaVA, ...)")
    model_revision: str | None = Field(None, description="hub revision of model")
    image_token: str | None = Field(
        None, description="backend transformers: text that replaces <ImageHere>; default: the "
        "processor's image token, or '' for processors that insert image tokens themselves "
        "(BLIP-2, InstructBLIP)")
    use_chat_template: bool = Field(
        False, description="backend transformers: render turns with the processor's chat "
        "template instead of prompt_template (the image goes before the text)")
    # -- the conversation -------------------------------------------------------------------
    prompt_template: str = Field(MINIGPT4_PROMPT_TEMPLATE,
                                 description="one turn; '{}' is replaced by the user's message")
    prompt: str = Field(MINIGPT4_DETAIL_PROMPT, description="first user message; must contain "
                        "<ImageHere> once, where the image embeddings go")
    continue_prompt: str = Field("Continue", description="second user message, sent when the "
                                 "first answer is short")
    continue_min_tokens: int = Field(80, ge=0, description="answers with fewer tokens get the "
                                     "second turn (miniGPT-4: 80); 0 disables it")
    end_symbol: str = Field(MINIGPT4_END_SYMBOL, description="generation stops at this string and "
                            "the answer is cut before it; '' to stop at end-of-sequence only")
    # -- generation ---------------------------------------------------------------------------
    max_new_tokens: int = Field(300, ge=1, description="per turn (miniGPT-4's chat: 300)")
    num_beams: int = Field(1, ge=1)
    do_sample: bool = Field(False, description="sample instead of greedy / beam search "
                            "(miniGPT-4's chat demo samples with top_p 0.9, temperature 1.0)")
    temperature: float = Field(1.0, gt=0, description="sampling only")
    top_p: float = Field(0.9, gt=0, le=1, description="sampling only")
    top_k: int = Field(50, ge=0, description="sampling only (transformers' default, which "
                       "miniGPT-4 used implicitly); 0 disables")
    repetition_penalty: float = Field(1.0, gt=0)
    length_penalty: float = Field(1.0, description="beam search only")
    # -- execution ----------------------------------------------------------------------------
    device: str | None = Field(None, description="torch device; default: the run's device")
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="weights and activations (the Q-Former stays float32, as in "
        "transformers' BLIP-2); default float16 on CUDA, float32 elsewhere")
    batch_size: int = Field(8, ge=1, description="images per generate() call (left padding)")
    seed: int | None = Field(None, description="seed for sampling and tiny_random weights; "
                             "default: the run's seed")
    tiny_random: bool = Field(
        False, description="build every part from tiny configs with random weights and a "
        "tokenizer trained in-process: for tests/demos of the code path; produces gibberish")

    @model_validator(mode="after")
    def _check(self) -> MiniGPT4Params:
        if self.prompt_template.count("{}") != 1:
            raise ValueError(f"prompt_template must contain '{{}}' exactly once (where the user "
                             f"message goes); found {self.prompt_template.count('{}')} in "
                             f"{self.prompt_template!r}")
        if self.prompt.count(IMAGE_SLOT) != 1:
            raise ValueError(f"prompt must contain {IMAGE_SLOT} exactly once (where the image "
                             f"goes); found {self.prompt.count(IMAGE_SLOT)} in {self.prompt!r}")
        for name in ("prompt_template", "continue_prompt"):
            if IMAGE_SLOT in getattr(self, name):
                raise ValueError(f"{name} must not contain {IMAGE_SLOT}; only prompt holds the image")
        minigpt4_only = ("minigpt4_checkpoint", "llm", "llm_revision", "blip2_revision")
        generic_only = ("model", "model_revision", "image_token")
        if self.backend == "minigpt4":
            given = [f for f in generic_only if getattr(self, f) is not None]
            if self.use_chat_template:
                given.append("use_chat_template")
            if given:
                raise ValueError(f"{', '.join(given)}: only for backend 'transformers'; backend "
                                 "'minigpt4' takes blip2_model, minigpt4_checkpoint and llm")
            if not self.tiny_random:
                missing = [f for f in ("minigpt4_checkpoint", "llm") if getattr(self, f) is None]
                if missing:
                    raise ValueError(
                        f"backend 'minigpt4' needs {' and '.join(missing)}: the miniGPT-4 "
                        "checkpoint file (its 'model' state dict holds llama_proj) and the LLM it "
                        "was trained with (e.g. a local Vicuna v0 7B folder); or tiny_random: true "
                        "for a random-weight test model")
        else:
            given = [f for f in minigpt4_only if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for backend 'minigpt4'; backend "
                                 "'transformers' takes model (and model_revision)")
            if self.tiny_random:
                raise ValueError("tiny_random is for backend 'minigpt4'; backend 'transformers' "
                                 "loads a model by id or folder (save a tiny one with "
                                 "save_pretrained to test offline)")
            if self.model is None:
                raise ValueError("backend 'transformers' needs model: an image-text-to-text model "
                                 "id or local folder")
        return self


# --------------------------------------------------------------------------------------
# Shared helpers: sources, files, dtypes, the conversation
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Source:
    """A model given as a hub id or a local folder / file."""

    name: str                   # as the user wrote it
    revision: str | None
    local: Path | None          # resolved local path, or None for a hub id

    @property
    def location(self) -> str:
        return str(self.local) if self.local is not None else self.name

    def identity(self) -> dict[str, Any]:
        if self.local is None:
            return {"hub_id": self.name, "revision": self.revision or "main"}
        return {"path": str(self.local), "files": _path_identity(self.local)}


def _resolve_source(name: str, revision: str | None, base_dir: Path, field: str) -> _Source:
    path = Path(name).expanduser()
    candidate = path if path.is_absolute() else base_dir / path
    if candidate.exists():
        return _Source(name, revision, candidate.resolve())
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        raise FileNotFoundError(f"{field}: {name!r}: no such file or folder ({candidate}); "
                                "expected a local path or a hub id 'org/name'")
    return _Source(name, revision, None)


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _path_identity(path: Path) -> list[list[Any]]:
    """Return ``[[name, size, mtime_ns], ...]`` of a file, or of a folder's files."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _resolve_local_file(name: str, base_dir: Path, field: str) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"{field}: {name!r}: no such file ({path})")
    return path.resolve()


def _torch_dtype(name: str | None, device: str) -> str:
    if name is not None:
        return name
    # miniGPT-4 runs in float16 on GPUs; CPUs are slow or inexact in half precision
    return "float16" if device.startswith("cuda") else "float32"


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """Return the ``from_pretrained`` dtype keyword of the installed transformers."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def render_conversation(template: str, user_turns: Sequence[str], answers: Sequence[str]) -> str:
    """Return the LLM input of a conversation whose last user turn awaits its answer.

    Each user turn is ``template`` with ``{}`` replaced by the message, followed by the
    assistant's answer. With miniGPT-4's template ``"###Human: {} ###Assistant: "`` the
    second turn therefore reads ``... ###Assistant: <answer>###Human: Continue
    ###Assistant: ``: the template's leading ``###`` is Vicuna v0's turn separator, as in
    miniGPT-4's ``Conversation.get_prompt``.
    """
    if len(answers) != len(user_turns) - 1:
        raise ValueError(f"{len(user_turns)} user turns need {len(user_turns) - 1} answers; "
                         f"got {len(answers)}")
    text = ""
    for i, turn in enumerate(user_turns):
        text += template.replace("{}", turn)  # replace, not format: prompts may hold braces
        if i < len(answers):
            text += answers[i]
    return text


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One image's conversation with the captioner.

    Attributes
    ----------
    prompts : tuple of str, one per turn
        The full LLM input of each turn (with ``<ImageHere>`` where the image goes, or the
        processor's rendering for chat templates).
    answers : tuple of str, one per turn
        Each turn's answer, cut at the end symbol and stripped.
    answer_tokens : tuple of int, one per turn
        Each answer's length in LLM tokens (what the Continue rule compares).
    """

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    answer_tokens: tuple[int, ...]

    @property
    def caption(self) -> str:
        """The answers joined by a space: the image's description."""
        return " ".join(a for a in self.answers if a)


def _load_rgb(path: Path) -> Image.Image:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


class _ConversationCaptioner:
    """The miniGPT-4 conversation (first turn, Continue rule), independent of the model."""

    component = "minigpt4"

    def __init__(self, params: MiniGPT4Params, *, device: str, seed: int, base_dir: Path):
        from neuroenc.context import resolve_device

        self.params = params
        self.device = resolve_device(params.device) if params.device else device
        self.dtype_name = _torch_dtype(params.dtype, self.device)
        self.seed = params.seed if params.seed is not None else seed
        self.base_dir = Path(base_dir)
        self._loaded = False

    # -- what subclasses provide ----------------------------------------------------------
    def _load(self) -> None:
        raise NotImplementedError

    def _generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        """Return the raw decoded continuation of each prompt (one image each)."""
        raise NotImplementedError

    def _count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def _model_identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def _render(self, user_turns: Sequence[str], answers: Sequence[str]) -> str:
        return render_conversation(self.params.prompt_template, user_turns, answers)

    # -- shared ------------------------------------------------------------------------------
    def load(self) -> None:
        """Load (or build) the model now; otherwise the first ``caption()`` does.

        Loading is deferred so that a run whose captions are all cached never loads a
        multi-gigabyte LLM: :func:`neuroenc.captions.caption_images` needs only
        ``identity()``.
        """
        if not self._loaded:
            self._load()
            self._loaded = True

    def _generation_kwargs(self) -> dict[str, Any]:
        p = self.params
        kwargs: dict[str, Any] = {"max_new_tokens": p.max_new_tokens, "num_beams": p.num_beams,
                                  "do_sample": p.do_sample,
                                  "repetition_penalty": p.repetition_penalty}
        # Passed explicitly (not left to the model's generation_config, which e.g. Llama-2-chat
        # sets to sampling) so that identity() describes what actually runs.
        if p.do_sample:
            kwargs.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
        if p.num_beams > 1:
            kwargs["length_penalty"] = p.length_penalty
        return kwargs

    def _clean(self, text: str) -> str:
        end = self.params.end_symbol
        return (text.split(end)[0] if end else text).strip()

    def _generate_in_batches(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        size = self.params.batch_size
        out: list[str] = []
        for start in range(0, len(images), size):
            raw = self._generate(images[start:start + size], prompts[start:start + size])
            out.extend(self._clean(text) for text in raw)
        return out

    def transcribe(self, images: Sequence[str | Path]) -> list[Transcript]:
        """Return each image's conversation: the detailed description, then Continue if short.

        Parameters
        ----------
        images : sequence of Path, length n_images

        Returns
        -------
        list of Transcript, length n_images
            One or two turns each; the second only where the first answer has fewer than
            ``continue_min_tokens`` tokens.
        """
        import torch

        paths = [Path(p) for p in images]
        if not paths:
            return []
        self.load()
        pil = [_load_rgb(p) for p in paths]
        p = self.params
        first = self._render([p.prompt], [])
        devices = []
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index
            devices = [index if index is not None else torch.cuda.current_device()]
        # A private RNG stream: sampled captions are reproducible for a seed, batch size and
        # image order, and the run's global RNG is left as it was.
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.seed)
            answers1 = self._generate_in_batches(pil, [first] * len(pil))
            tokens1 = [self._count_tokens(a) for a in answers1]
            short = [i for i, n in enumerate(tokens1) if n < p.continue_min_tokens]
            second = {i: self._render([p.prompt, p.continue_prompt], [answers1[i]]) for i in short}
            answers2 = dict(zip(short, self._generate_in_batches([pil[i] for i in short],
                                                                 [second[i] for i in short])))
        transcripts = []
        for i in range(len(paths)):
            if i in answers2:
                transcripts.append(Transcript((first, second[i]), (answers1[i], answers2[i]),
                                              (tokens1[i], self._count_tokens(answers2[i]))))
            else:
                transcripts.append(Transcript((first,), (answers1[i],), (tokens1[i],)))
        return transcripts

    def caption(self, images: Sequence[str | Path]) -> list[str]:
        """Return one description per image (the answers of its conversation, joined)."""
        return [t.caption for t in self.transcribe(images)]

    def identity(self) -> dict[str, Any]:
        """Return models and weights, prompt, Continue rule, generation settings and dtype.

        Not included, on purpose: device and batch size (they change numerics at the level
        of rounding, and a new GPU must not cost hours of re-captioning) and library
        versions (likewise). With ``do_sample`` the seed is included; pin hub revisions to
        commits for an exact key.
        """
        p = self.params
        return {
            "component": self.component,
            "backend": p.backend,
            **self._model_identity(),
            "prompt_template": p.prompt_template,
            "prompt": p.prompt,
            "continue_prompt": p.continue_prompt,
            "continue_min_tokens": p.continue_min_tokens,
            "end_symbol": p.end_symbol,
            "generation": {"max_new_tokens": p.max_new_tokens, "num_beams": p.num_beams,
                           "do_sample": p.do_sample, "temperature": p.temperature,
                           "top_p": p.top_p, "top_k": p.top_k,
                           "repetition_penalty": p.repetition_penalty,
                           "length_penalty": p.length_penalty},
            "dtype": self.dtype_name,
            "seed": self.seed if (p.do_sample or p.tiny_random) else None,
        }


# --------------------------------------------------------------------------------------
# Backend minigpt4: the assembled model
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class MiniGPT4Parts:
    """miniGPT-4's modules, as transformers objects.

    Attributes
    ----------
    vision_model : transformers.Blip2VisionModel
        EVA-CLIP ViT-g/14 as BLIP-2 uses it; its ``post_layernorm`` is ``ln_vision``.
    qformer : transformers.Blip2QFormerModel
    query_tokens : torch.Tensor of shape (1, n_query, qformer_hidden)
    llama_proj : torch.nn.Linear
        qformer_hidden -> llm_hidden.
    llm : transformers.PreTrainedModel
        A causal LM (``LlamaForCausalLM`` for Vicuna).
    tokenizer : transformers.PreTrainedTokenizerBase
    image_size : int
        The vision encoder's input resolution (224 for EVA-CLIP ViT-g/14).
    """

    vision_model: Any
    qformer: Any
    query_tokens: Any
    llama_proj: Any
    llm: Any
    tokenizer: Any
    image_size: int


#: A small English corpus for the tiny tokenizer (words of image descriptions).
_TINY_CORPUS = (
    "The image shows a man riding a horse on a sandy beach at sunset.",
    "A red car is parked in front of a white house with a green door.",
    "Two people are sitting at a wooden table with plates of food and cups of coffee.",
    "There is a cat sleeping on a blue sofa next to a window.",
    "In the background there are tall trees, mountains and a cloudy sky.",
    "A woman in a black dress holds an umbrella on a busy city street.",
    "The word STOP is written in white letters on a red sign.",
)


def train_tiny_tokenizer(extra_texts: Sequence[str] = (), vocab_size: int = 512):
    """Return a byte-level BPE tokenizer trained in-process (no download).

    Special tokens as LLaMA's: ``<unk>`` 0, ``<s>`` 1 (prepended as BOS), ``</s>`` 2.
    For tiny random test models only.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([*_TINY_CORPUS, *extra_texts], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")


def tiny_random_parts(seed: int, extra_texts: Sequence[str] = ()) -> MiniGPT4Parts:
    """Return miniGPT-4's parts built from tiny configs with random weights (seeded).

    Vision encoder 32 px / patch 8 / width 32 / 1 layer, Q-Former width 32 / 2 layers
    (cross-attention every 2nd) with 32 query tokens, LLaMA width 64 / 2 layers. For
    tests and demos of the code path: the captions are gibberish.
    """
    import torch
    from transformers import (Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig,
                              Blip2VisionModel, LlamaConfig, LlamaForCausalLM)

    tokenizer = train_tiny_tokenizer(extra_texts)
    # BLIP-2's vision config initialises with std 1e-10 (real weights overwrite it) and the
    # Q-Former with 0.02; at those scales random image tokens hardly depend on the image,
    # so the tiny model uses larger ones and its (gibberish) captions differ between images.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = Blip2VisionModel(Blip2VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8, initializer_range=0.02))
        qformer_config = Blip2QFormerConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            encoder_hidden_size=32, cross_attention_frequency=2, initializer_range=0.2)
        qformer = Blip2QFormerModel(qformer_config)
        query_tokens = torch.randn(1, 32, 32) * qformer_config.initializer_range
        llm = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        llama_proj = torch.nn.Linear(32, 64)
    return MiniGPT4Parts(vision, qformer, query_tokens, llama_proj, llm, tokenizer, image_size=32)


def _fetch(source: _Source, filename: str) -> Path | None:
    """Return a checkpoint file of a local folder or hub repo, or None if it has none."""
    if source.local is not None:
        path = source.local / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source.name, filename, revision=source.revision))
    except EntryNotFoundError:  # also offline and not cached (LocalEntryNotFoundError)
        return None


def _read_tensors(source: _Source, prefixes: tuple[str, ...], field: str) -> dict[str, torch.Tensor]:
    """Return the tensors whose names start with ``prefixes`` from a transformers checkpoint.

    Only the shards (and, for safetensors, only the tensors) that hold them are read: a
    BLIP-2 FlanT5-XXL checkpoint is mostly its 11B language model, which miniGPT-4 does
    not use.
    """
    import torch

    wanted = lambda key: key.startswith(prefixes)  # noqa: E731
    tried = []
    for index_name, single_name in (("model.safetensors.index.json", "model.safetensors"),
                                    ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        tried += [index_name, single_name]
        index = _fetch(source, index_name)
        if index is not None:
            weight_map = json.loads(index.read_text())["weight_map"]
            shard_names = sorted({shard for key, shard in weight_map.items() if wanted(key)})
            files = [_fetch(source, name) for name in shard_names]
            if any(f is None for f in files):
                raise FileNotFoundError(f"{field}: {source.location}: {index_name} lists shards "
                                        f"{shard_names} but not all of them could be found")
        else:
            single = _fetch(source, single_name)
            files = [single] if single is not None else []
        if not files:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for file in files:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as fh:
                    tensors.update({k: fh.get_tensor(k) for k in fh.keys() if wanted(k)})
            else:
                try:  # memory-mapped: a shard may be mostly language-model weights
                    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                    state = torch.load(file, map_location="cpu", weights_only=True)
                tensors.update({k: v for k, v in state.items() if wanted(k)})
        return tensors
    offline = " (offline: is it in the Hugging Face cache?)" if source.local is None else ""
    raise FileNotFoundError(f"{field}: {source.location}: no transformers checkpoint found; "
                            f"looked for {', '.join(tried)}{offline}")


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str,
                 where: str) -> torch.nn.Module:
    """Load ``prefix``-ed tensors into a module built on the meta device; check coverage."""
    import warnings

    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{where}: {len(missing)} tensors of {prefix.rstrip('.')} are missing "
                         f"(e.g. {', '.join(prefix + m for m in missing[:3])}); is it a "
                         "transformers BLIP-2 checkpoint of the configured architecture?")
    unexpected = sorted(set(state) - expected)
    if unexpected:
        warnings.warn(f"{where}: ignoring {len(unexpected)} tensors under {prefix!r} that the "
                      f"transformers module has no place for: {', '.join(unexpected[:5])}",
                      stacklevel=3)
        state = {k: v for k, v in state.items() if k in expected}
    module.load_state_dict(state, strict=True, assign=True)
    return module


def _load_llama_proj(path: Path, in_features: int, out_features: int) -> torch.nn.Linear:
    """Return miniGPT-4's ``llama_proj`` from its checkpoint's ``model`` state dict."""
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"minigpt4_checkpoint: {path}: holds objects other than tensors and "
                         "plain containers, which are not loaded (untrusted pickles run code); "
                         "re-save its 'model' state dict with torch.save") from exc
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "llama_proj.weight" not in state:
        found = sorted(state)[:8] if isinstance(state, dict) else type(checkpoint).__name__
        raise ValueError(f"minigpt4_checkpoint: {path}: expected a dict with a 'model' state dict "
                         f"holding llama_proj.weight and llama_proj.bias; found {found}")
    others = sorted(k for k in state if not k.startswith("llama_proj."))
    if others:
        raise ValueError(f"minigpt4_checkpoint: {path}: holds weights other than llama_proj "
                         f"({', '.join(others[:4])}, ...); miniGPT-4 (v1) trained llama_proj only "
                         "- is this a MiniGPT-v2 / LoRA checkpoint? Those are not supported")
    weight, bias = state["llama_proj.weight"], state.get("llama_proj.bias")
    if tuple(weight.shape) != (out_features, in_features) or bias is None:
        raise ValueError(f"minigpt4_checkpoint: {path}: llama_proj.weight has shape "
                         f"{tuple(weight.shape)} (bias {'present' if bias is not None else 'missing'}); "
                         f"expected ({out_features}, {in_features}) with a bias: Q-Former width "
                         f"{in_features} -> the LLM's hidden size {out_features} (a 13B checkpoint "
                         "with a 7B LLM?)")
    proj = torch.nn.Linear(in_features, out_features)
    proj.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return proj


def _load_minigpt4_parts(blip2: _Source, llm: _Source, checkpoint: Path,
                         dtype: torch.dtype) -> MiniGPT4Parts:
    """Return miniGPT-4's parts from its three weight sources (see the module docstring)."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Blip2Config,
                              Blip2QFormerModel, Blip2VisionModel)

    config = Blip2Config.from_pretrained(blip2.location, revision=blip2.revision)
    where = f"blip2_model {blip2.location}"
    tensors = _read_tensors(blip2, ("vision_model.", "qformer.", "query_tokens"), "blip2_model")
    with torch.device("meta"):  # no random init of a 1B-parameter ViT only to overwrite it
        vision = Blip2VisionModel(config.vision_config)
        qformer = Blip2QFormerModel(config.qformer_config)
    vision = _load_module(vision, tensors, "vision_model.", where)
    qformer = _load_module(qformer, tensors, "qformer.", where)
    expected = (1, config.num_query_tokens, config.qformer_config.hidden_size)
    found = tuple(tensors["query_tokens"].shape) if "query_tokens" in tensors else None
    if found != expected:
        raise ValueError(f"{where}: query_tokens has shape {found}; expected {expected} "
                         "(num_query_tokens, Q-Former width)")
    query_tokens = tensors["query_tokens"].float()

    model = AutoModelForCausalLM.from_pretrained(llm.location, revision=llm.revision,
                                                 **_dtype_kwargs(dtype))
    tokenizer = AutoTokenizer.from_pretrained(llm.location, revision=llm.revision)
    proj = _load_llama_proj(checkpoint, config.qformer_config.hidden_size,
                            model.config.hidden_size)
    return MiniGPT4Parts(vision, qformer, query_tokens, proj, model, tokenizer,
                         image_size=config.vision_config.image_size)


class MiniGPT4Captioner(_ConversationCaptioner):
    """miniGPT-4 assembled from transformers modules (see the module docstring).

    Parameters
    ----------
    params : MiniGPT4Params
        With ``backend: minigpt4``.
    device : str
        The run's device (used unless ``params.device`` is set).
    seed : int
        The run's seed (used unless ``params.seed`` is set).
    base_dir : Path
        Relative local paths resolve here.
    """

    def __init__(self, params: MiniGPT4Params, *, device: str = "cpu", seed: int = 0,
                 base_dir: Path = Path(".")):
        super().__init__(params, device=device, seed=seed, base_dir=base_dir)
        if params.tiny_random:
            self.blip2 = self.llm_source = self.checkpoint = None
        else:
            self.blip2 = _resolve_source(params.blip2_model, params.blip2_revision, self.base_dir,
                                         "blip2_model")
            self.llm_source = _resolve_source(params.llm, params.llm_revision, self.base_dir, "llm")
            self.checkpoint = _resolve_local_file(params.minigpt4_checkpoint, self.base_dir,
                                                  "minigpt4_checkpoint")
        self.parts: MiniGPT4Parts | None = None

    def _load(self) -> None:
        import torch

        dtype = getattr(torch, self.dtype_name)
        if self.params.tiny_random:
            p = self.params
            parts = tiny_random_parts(self.seed, (p.prompt_template, p.prompt, p.continue_prompt))
        else:
            parts = _load_minigpt4_parts(self.blip2, self.llm_source, self.checkpoint, dtype)
        device = torch.device(self.device)
        parts.vision_model.to(device=device, dtype=dtype).eval()
        # The Q-Former, its queries and llama_proj stay float32 (transformers' BLIP-2 keeps the
        # Q-Former in float32; miniGPT-4 ran them under autocast): 0.1B parameters, cheap.
        parts.qformer.to(device=device, dtype=torch.float32).eval()
        parts.query_tokens = parts.query_tokens.to(device=device, dtype=torch.float32)
        parts.llama_proj.to(device=device, dtype=torch.float32).eval()
        parts.llm.to(device=device, dtype=dtype).eval()
        if parts.tokenizer.pad_token_id is None:
            # miniGPT-4 pads with the EOS token; padded positions are masked out anyway
            parts.tokenizer.pad_token = parts.tokenizer.eos_token
        self.parts = parts

    # -- the model's steps, public so that they can be inspected and tested ------------------
    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return images as the vision encoder takes them, shape (n, 3, size, size).

        BLIP-2's eval preprocessing (LAVIS ``Blip2ImageEvalProcessor``, which miniGPT-4
        uses): bicubic resize of the whole image to size x size (no crop), [0, 1], then
        OpenAI CLIP mean / std.
        """
        import numpy as np
        import torch
        from PIL import Image as PILImage

        self.load()
        size = self.parts.image_size
        arrays = [np.asarray(img.convert("RGB").resize((size, size), PILImage.BICUBIC),
                             dtype=np.float32) / 255.0 for img in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (batch - mean) / std

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the image tokens the LLM sees, shape (n, n_query, llm_hidden).

        ViT -> ln_vision (the vision model's post_layernorm) -> Q-Former queries
        cross-attending to every patch -> llama_proj (miniGPT-4's ``encode_img``).
        """
        import torch

        self.load()
        parts = self.parts
        device = torch.device(self.device)
        vision_dtype = next(parts.vision_model.parameters()).dtype
        image_embeds = parts.vision_model(
            pixel_values=pixel_values.to(device=device, dtype=vision_dtype)).last_hidden_state
        image_embeds = image_embeds.float()
        queries = parts.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = parts.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long,
                                              device=device)).last_hidden_state
        llm_dtype = parts.llm.get_input_embeddings().weight.dtype
        return parts.llama_proj(query_output).to(llm_dtype)

    def prompt_token_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Return the token ids before and after the ``<ImageHere>`` slot of a prompt.

        As miniGPT-4's ``Chat.get_context_emb``: the prompt is split at the slot and each
        segment tokenized on its own; only the first gets the tokenizer's special tokens
        (LLaMA: the BOS token).
        """
        self.load()
        if prompt.count(IMAGE_SLOT) != 1:
            raise ValueError(f"prompt must contain {IMAGE_SLOT} exactly once; got {prompt!r}")
        before, after = prompt.split(IMAGE_SLOT)
        tok = self.parts.tokenizer
        return (tok(before, add_special_tokens=True).input_ids,
                tok(after, add_special_tokens=False).input_ids)

    def prompt_embeddings(self, prompts: Sequence[str], image_tokens: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the LLM input for a batch: embeddings and attention mask, left-padded.

        Parameters
        ----------
        prompts : sequence of str, length n
            Each with one ``<ImageHere>``.
        image_tokens : tensor of shape (n, n_query, llm_hidden)
            From :meth:`encode_images`.

        Returns
        -------
        inputs_embeds : tensor of shape (n, max_len, llm_hidden)
            ``embed(before) ⊕ image_tokens ⊕ embed(after)`` per prompt, zeros on the left
            where shorter (left padding: generation appends on the right).
        attention_mask : tensor of shape (n, max_len)
            0 on padding, 1 elsewhere.
        """
        import torch

        embed = self.parts.llm.get_input_embeddings()
        device = image_tokens.device
        sequences = []
        for prompt, image in zip(prompts, image_tokens):
            before, after = self.prompt_token_ids(prompt)
            sequences.append(torch.cat([
                embed(torch.tensor(before, dtype=torch.long, device=device)), image,
                embed(torch.tensor(after, dtype=torch.long, device=device))]))
        length = max(s.shape[0] for s in sequences)
        inputs = image_tokens.new_zeros((len(sequences), length, image_tokens.shape[-1]))
        mask = torch.zeros((len(sequences), length), dtype=torch.long, device=device)
        for row, seq in enumerate(sequences):
            inputs[row, length - seq.shape[0]:] = seq
            mask[row, length - seq.shape[0]:] = 1
        return inputs, mask

    def _generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        parts = self.parts
        tok = parts.tokenizer
        inputs, mask = self.prompt_embeddings(prompts, self.encode_images(self.pixel_values(images)))
        kwargs = self._generation_kwargs()
        if self.params.end_symbol:
            kwargs.update(stop_strings=[self.params.end_symbol], tokenizer=tok)
        # Given inputs_embeds only, generate() returns the new tokens only.
        out = parts.llm.generate(inputs_embeds=inputs, attention_mask=mask,
                                 pad_token_id=tok.pad_token_id, **kwargs)
        return tok.batch_decode(out, skip_special_tokens=True)

    def _count_tokens(self, text: str) -> int:
        return len(self.parts.tokenizer(text, add_special_tokens=False).input_ids)

    def _model_identity(self) -> dict[str, Any]:
        if self.params.tiny_random:
            return {"weights": "tiny_random (tiny configs, random weights, in-process tokenizer)"}
        return {"blip2_model": self.blip2.identity(), "llm": self.llm_source.identity(),
                "minigpt4_checkpoint": _file_identity(self.checkpoint)}


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


# --------------------------------------------------------------------------------------
# Captions that come with the data
# --------------------------------------------------------------------------------------

def nsd_id_from_name(path: str | Path) -> int | None:
    """Return the NSD image id (0-based) in a file name like ``train-0001_nsd-00013.png``."""
    match = _NSD_ID.search(Path(path).name)
    return int(match.group(1)) if match else None


def dataset_root_of(image: str | Path) -> Path:
    """Return the dataset root of an image laid out as ``root/subjXX/<split>/<images>/<file>``."""
    image = Path(image)
    parents = image.resolve().parents
    if len(parents) < 4 or not _SUBJECT_DIR.fullmatch(parents[2].name):
        raise ValueError(f"image {image}: not in the Algonauts layout "
                         "<root>/subjXX/training_split/training_images/<file> (or test_split/"
                         "test_images), so the dataset root holding its captions is unknown")
    return parents[3]


def _require_nsd_id(image: Path) -> int:
    nsd_id = nsd_id_from_name(image)
    if nsd_id is None:
        raise ValueError(f"image {image}: no NSD id in its name; expected a name like "
                         "train-0001_nsd-00013.png")
    return nsd_id


def _read_csv(path: Path, required: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        found = list(reader.fieldnames or [])
        missing = [c for c in required if c not in found]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(repr(c) for c in missing)}; found "
                             f"columns: {', '.join(found) or '(none)'}")
        return list(reader)


class DatasetCaptionsParams(BaseModel):
    """Parameters of ``dataset-captions``."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["auto", "demo", "coco"] = Field(
        "auto", description="'demo': <dataset root>/demo_captions.csv; 'coco': NSD's COCO captions "
        "(stim_info + coco_annotations); 'auto': coco if stim_info is given, else demo")
    stim_info: str | None = Field(None, description="NSD's nsd_stim_info_merged.csv (columns "
                                  "nsdId or the row index, cocoId, cocoSplit)")
    coco_annotations: list[str] = Field(
        default_factory=list, description="COCO captions_train2017.json / captions_val2017.json, "
        "or folders holding them (directly or under annotations/)")
    which: Literal["first", "all"] = Field("first", description="of COCO's ~5 human captions: the "
                                           "first (lowest annotation id) or all joined")
    separator: str = Field(" ", description="joins the captions when which is 'all'")

    @model_validator(mode="after")
    def _check(self) -> DatasetCaptionsParams:
        coco = self.source == "coco" or (self.source == "auto" and self.stim_info is not None)
        if coco and (self.stim_info is None or not self.coco_annotations):
            raise ValueError("COCO captions need stim_info (nsd_stim_info_merged.csv) and "
                             "coco_annotations (captions_train2017.json / captions_val2017.json)")
        if self.source == "demo" and (self.stim_info is not None or self.coco_annotations):
            raise ValueError("stim_info / coco_annotations are for source 'coco', not 'demo'")
        return self


_COCO_FILES = ("captions_train2017.json", "captions_val2017.json")


class DatasetCaptioner:
    """Captions that ship with the dataset, looked up by each image's NSD id.

    The dataset root is the folder above ``subjXX`` in the image's path. ``demo``: the
    demo dataset's ``demo_captions.csv`` (``nsd_id,caption``). ``coco``: NSD's images are
    COCO images; ``nsd_stim_info_merged.csv`` maps each NSD id to its ``cocoId`` (and
    ``cocoSplit``), whose human captions are in COCO's ``captions_*2017.json``.
    """

    component = "dataset-captions"

    def __init__(self, params: DatasetCaptionsParams, base_dir: Path = Path(".")):
        self.params = params
        self.source = "coco" if (params.source == "coco" or (
            params.source == "auto" and params.stim_info is not None)) else "demo"
        self.stim_info: Path | None = None
        self.coco_files: list[Path] = []
        if self.source == "coco":
            self.stim_info = _resolve_local_file(params.stim_info, Path(base_dir), "stim_info")
            for i, entry in enumerate(params.coco_annotations):
                self.coco_files += self._coco_files(entry, Path(base_dir), f"coco_annotations[{i}]")
        self._demo: dict[Path, dict[int, str]] = {}
        self._nsd_to_coco: dict[int, tuple[int, str]] | None = None
        self._coco: dict[int, list[tuple[int, str]]] | None = None

    @staticmethod
    def _coco_files(entry: str, base_dir: Path, field: str) -> list[Path]:
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.is_file():
            return [path.resolve()]
        if path.is_dir():
            found = [d / name for d in (path, path / "annotations") for name in _COCO_FILES
                     if (d / name).is_file()]
            if found:
                return [p.resolve() for p in found]
            raise FileNotFoundError(f"{field}: {path}: holds neither {' nor '.join(_COCO_FILES)} "
                                    "(looked in the folder and in annotations/)")
        raise FileNotFoundError(f"{field}: {entry!r}: no such file or folder ({path})")

    # -- demo ------------------------------------------------------------------------------
    def _demo_table(self, root: Path) -> dict[int, str]:
        if root not in self._demo:
            path = root / "demo_captions.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file; source 'demo' reads the demo "
                                        "dataset's captions (for NSD give stim_info and "
                                        "coco_annotations)")
            self._demo[root] = {int(row["nsd_id"]): row["caption"]
                                for row in _read_csv(path, ("nsd_id", "caption"))}
        return self._demo[root]

    # -- coco ------------------------------------------------------------------------------
    def _load_coco(self) -> None:
        if self._nsd_to_coco is not None:
            return
        rows = _read_csv(self.stim_info, ("cocoId", "cocoSplit"))
        id_column = "nsdId" if rows and "nsdId" in rows[0] else None
        # Without an nsdId column the row order is the NSD id (the file's unnamed index)
        self._nsd_to_coco = {(int(row[id_column]) if id_column else i):
                             (int(row["cocoId"]), row["cocoSplit"]) for i, row in enumerate(rows)}
        captions: dict[int, list[tuple[int, str]]] = {}
        for path in self.coco_files:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "annotations" not in data:
                raise ValueError(f"{path}: not a COCO captions file (no 'annotations' list)")
            for ann in data["annotations"]:
                captions.setdefault(int(ann["image_id"]), []).append(
                    (int(ann["id"]), str(ann["caption"]).strip()))
        for anns in captions.values():
            anns.sort()  # 'first' = lowest annotation id, independent of file order
        self._coco = captions

    def _coco_caption(self, image: Path) -> str:
        self._load_coco()
        nsd_id = _require_nsd_id(image)
        if nsd_id not in self._nsd_to_coco:
            raise KeyError(f"image {image}: NSD id {nsd_id} has no row in {self.stim_info}")
        coco_id, split = self._nsd_to_coco[nsd_id]
        anns = self._coco.get(coco_id)
        if not anns:
            raise KeyError(f"image {image}: NSD id {nsd_id} is COCO image {coco_id} ({split}), "
                           f"which has no caption in {', '.join(str(p) for p in self.coco_files)}"
                           f"; is captions_{split}.json among coco_annotations?")
        texts = [text for _, text in anns]
        return texts[0] if self.params.which == "first" else self.params.separator.join(texts)

    def caption(self, images: Sequence[str | Path]) -> list[str]:
        """Return each image's caption from the dataset's files."""
        out = []
        for image in map(Path, images):
            if self.source == "coco":
                out.append(self._coco_caption(image))
                continue
            root = dataset_root_of(image)
            table = self._demo_table(root)
            nsd_id = _require_nsd_id(image)
            if nsd_id not in table:
                raise KeyError(f"image {image}: NSD id {nsd_id} not in {root / 'demo_captions.csv'}")
            out.append(table[nsd_id])
        return out

    def identity(self) -> dict[str, Any]:
        """Return the source, the files read (path, size, mtime) and the caption choice."""
        if self.source == "demo":
            # The file sits beside the images; demo images (their bytes key the cache) are
            # drawn together with their captions, so the same image has the same caption.
            return {"component": self.component, "source": "demo",
                    "file": "<dataset root>/demo_captions.csv"}
        return {"component": self.component, "source": "coco",
                "stim_info": _file_identity(self.stim_info),
                "coco_annotations": [_file_identity(p) for p in self.coco_files],
                "which": self.params.which,
                "separator": self.params.separator if self.params.which == "all" else None}


# --------------------------------------------------------------------------------------
# Captions from a user's file
# --------------------------------------------------------------------------------------

class CaptionFileParams(BaseModel):
    """Parameters of ``caption-file``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="CSV / TSV or JSON-lines file; relative to the registry")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field(
        "auto", description="'auto': by extension (.csv, .tsv, .jsonl / .ndjson)")
    image_column: str = Field("image", description="column / key naming the image: a file name "
                              "(train-0001_nsd-00013.png) or an NSD id (13)")
    caption_column: str = Field("caption", description="column / key holding the caption")


class CaptionFileCaptioner:
    """Captions read from a CSV or JSON-lines file, matched by file name or NSD id.

    An entry whose image value is all digits is an NSD id (0-based, as in Algonauts file
    names); any other value is matched by its file name (folders are ignored). An image
    is looked up by its file name first, then by the NSD id in its name.
    """

    component = "caption-file"

    def __init__(self, params: CaptionFileParams, base_dir: Path = Path(".")):
        self.params = params
        self.path = _resolve_local_file(params.path, Path(base_dir), "caption-file path")
        fmt = params.format
        if fmt == "auto":
            fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
                self.path.suffix.lower())
            if fmt is None:
                raise ValueError(f"caption-file {self.path}: cannot tell the format from the "
                                 f"extension {self.path.suffix!r}; expected .csv, .tsv, .jsonl or "
                                 ".ndjson, or set format")
        self.format = fmt
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.by_name: dict[str, str] = {}
        self.by_nsd_id: dict[int, str] = {}
        self._read()

    def _entries(self) -> list[tuple[str, Any, Any]]:
        """Return ``(where, image value, caption)`` per entry."""
        img, cap = self.params.image_column, self.params.caption_column
        if self.format in ("csv", "tsv"):
            rows = _read_csv(self.path, (img, cap), delimiter="\t" if self.format == "tsv" else ",")
            return [(f"{self.path}: row {i + 2}", row[img], row[cap]) for i, row in enumerate(rows)]
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.path}: line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or img not in record or cap not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{where}: expected an object with keys {img!r} and {cap!r}; "
                                 f"found {keys}")
            entries.append((where, record[img], record[cap]))
        return entries

    def _read(self) -> None:
        seen: dict[Any, str] = {}
        for where, image, caption in self._entries():
            if not isinstance(caption, str):
                raise ValueError(f"{where}: caption is {type(caption).__name__}; expected text")
            value = str(image).strip()
            if not value:
                raise ValueError(f"{where}: empty {self.params.image_column!r}")
            if value.isdigit():
                key: Any = int(value)
                table = self.by_nsd_id
            else:
                key = Path(value).name
                table = self.by_name
            if key in table and table[key] != caption:
                raise ValueError(f"{where}: image {value!r} already has a different caption "
                                 f"({seen[key]})")
            table[key] = caption
            seen[key] = where

    def caption(self, images: Sequence[str | Path]) -> list[str]:
        """Return each image's caption from the file."""
        out, missing = [], []
        for image in map(Path, images):
            if image.name in self.by_name:
                out.append(self.by_name[image.name])
                continue
            nsd_id = nsd_id_from_name(image)
            if nsd_id is not None and nsd_id in self.by_nsd_id:
                out.append(self.by_nsd_id[nsd_id])
                continue
            missing.append(image.name + (f" (NSD id {nsd_id})" if nsd_id is not None else ""))
        if missing:
            raise KeyError(f"caption-file {self.path}: no caption for {len(missing)} of "
                           f"{len(out) + len(missing)} images: {', '.join(missing[:5])}"
                           f"{', ...' if len(missing) > 5 else ''} (the file has "
                           f"{len(self.by_name)} entries by file name, {len(self.by_nsd_id)} by "
                           "NSD id)")
        return out

    def identity(self) -> dict[str, Any]:
        """Return the file's content hash, format and columns."""
        return {"component": self.component, "sha256": self.sha256, "format": self.format,
                "image_column": self.params.image_column,
                "caption_column": self.params.caption_column}


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
