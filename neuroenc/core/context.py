"""The run context handed to every component factory: seed, device, cache, progress."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from neuroenc.core.config import ComponentRef
    from neuroenc.core.plugins import PluginManager

__all__ = ["RunContext", "resolve_device", "seed_everything"]


def resolve_device(device: str) -> str:
    """Return a concrete torch device string for ``'auto'``, checking that it exists."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here; "
                           "use device: auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the run as another recipe may rebuild it: recipe, params and seed."""

    recipe: str
    params: dict
    seed: int


@dataclasses.dataclass
class RunContext:
    """What a component may use while it is built and run.

    Attributes
    ----------
    manager : PluginManager
        To build sub-components (:meth:`build`).
    cache_dir : Path
        Root of the on-disk caches (features, captions, demo data).
    device : str
        Concrete torch device ('cpu', 'cuda', 'cuda:1', 'mps').
    seed : int
    batch_size, num_workers : int
        Defaults for DataLoaders.
    show_progress : bool
        Whether long steps draw progress bars.
    base_dir : Path
        Folder of the registry file; relative paths in component params resolve here.
    models : dict
        The run's other models, as the runner gives them to a recipe that combines
        models (``ensemble``): ``{name: ModelSpec}``, a swept model as its point
        selected on validation for this subject.
    """

    manager: PluginManager
    cache_dir: Path
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 0
    show_progress: bool = True
    base_dir: Path = dataclasses.field(default_factory=Path.cwd)
    models: dict = dataclasses.field(default_factory=dict)

    def build(self, kind: str, ref: ComponentRef | dict | str) -> Any:
        """Return the component of ``kind`` that ``ref`` names, built with its params."""
        from neuroenc.core.config import ComponentRef

        if not isinstance(ref, ComponentRef):
            ref = ComponentRef.model_validate(ref)
        return self.manager.get(kind, ref.name).build(ref.params, self)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Any]:
        """Yield ``advance(n=1, description=None)``, which drives a rich progress bar.

        ``description`` replaces the bar's text (e.g. to show the running loss).
        """
        if not self.show_progress:
            yield lambda n=1, description=None: None
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total)
            def advance(n: int = 1, description: str | None = None) -> None:
                bar.update(task, advance=n, **({"description": description} if description else {}))
            yield advance
