"""Shared by the model-based captioners: weight sources, files, dtypes, and the conversation (miniGPT-4's prompt and its Continue rule)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch / transformers are imported when a captioner runs, not on plugin load
    from .minigpt4 import MiniGPT4Params
    import torch
    from PIL import Image

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
        from neuroenc.core.context import resolve_device

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
        multi-gigabyte LLM: :func:`neuroenc.stimuli.captions.caption_images` needs only
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
