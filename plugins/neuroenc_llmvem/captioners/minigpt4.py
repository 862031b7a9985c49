"""``minigpt4``: miniGPT-4 assembled from transformers modules (BLIP-2 front end, llama_proj, LLaMA / Vicuna) and its three weight sources."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # torch / transformers are imported when a captioner runs, not on plugin load
    import torch
    from PIL import Image
from .conversation import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SLOT,
    MINIGPT4_DETAIL_PROMPT,
    MINIGPT4_END_SYMBOL,
    MINIGPT4_PROMPT_TEMPLATE,
    _ConversationCaptioner,
    _dtype_kwargs,
    _file_identity,
    _resolve_local_file,
    _resolve_source,
    _Source,
)

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
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
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
    from transformers import (
        Blip2QFormerConfig,
        Blip2QFormerModel,
        Blip2VisionConfig,
        Blip2VisionModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

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
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Blip2Config,
        Blip2QFormerModel,
        Blip2VisionModel,
    )

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
