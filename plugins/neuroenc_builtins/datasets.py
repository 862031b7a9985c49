"""Dataset readers: the Algonauts 2023 challenge layout, the embedded demo data, and a
generic ``folder`` layout for a lab's own data. Each produces
:class:`neuroenc.data.subject.SubjectData`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from neuroenc import Component
from neuroenc.data.subject import DatasetError, SubjectData

from .algonauts import available_subjects, read_subject, subject_id
from .folder import FolderDataset


def _resolve_root(root: Path, base_dir: Path) -> Path:
    """Return a dataset root with ``$VARS`` and ``~`` expanded, relative to the registry."""
    resolved = Path(os.path.expandvars(str(root))).expanduser()
    return resolved if resolved.is_absolute() else Path(base_dir) / resolved


def _absolute(path: Path, context) -> Path:
    return _resolve_root(path, context.base_dir)


class AlgonautsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="folder holding subj01 .. subj08 (the challenge download)")
    check_values: bool = Field(True, description="scan every fMRI file for NaN / inf on load")

    @field_validator("root")
    @classmethod
    def _root_exists(cls, root: Path, info: ValidationInfo) -> Path:
        return _check_root(root, info, "subj01 .. subj08")


def _check_root(root: Path, info: ValidationInfo, holding: str) -> Path:
    """Fail registry validation on a missing dataset root (the reader checks the layout).

    With the registry's folder known (registry validation), a missing root fails
    `neuroenc validate`; the reader checks the layout itself when a run starts.
    """
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None:
        return root
    resolved = _resolve_root(root, base_dir)
    if not resolved.is_dir():
        raise ValueError(f"{resolved}: dataset root not found; expected a folder holding "
                         f"{holding}{_similar_folder(resolved)}")
    return root


def _similar_folder(path: Path) -> str:
    """Return " (did you mean '...'?)" for a sibling folder with a close name, or ""."""
    from neuroenc.core.plugins import suggest

    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        path, parent = parent, parent.parent
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    hint = suggest(path.name, siblings)
    return hint.replace("(did you mean '", f"(did you mean '{parent}/") if hint else ""


class AlgonautsReader:
    """Reads subjects laid out as the Algonauts 2023 challenge distributes them."""

    def __init__(self, root: Path, check_values: bool = True, metadata: dict | None = None):
        self.root = Path(root)
        self.check_values = check_values
        self.metadata = metadata
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found; expected a folder "
                               "holding subj01 .. subj08")

    def subjects(self) -> list[str]:
        return available_subjects(self.root)

    def resolve_subject(self, value) -> str:
        """Return the folder name for ``1``, ``'01'`` or ``'subj01'``."""
        return subject_id(value)

    def load(self, subject: str) -> SubjectData:
        return read_subject(self.root, subject, check_values=self.check_values,
                            metadata=self.metadata)


def _algonauts(params: AlgonautsParams, context) -> AlgonautsReader:
    return AlgonautsReader(_absolute(params.root, context), params.check_values)


class DemoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_subjects: int = Field(2, ge=1, le=8)
    n_train: int = Field(1000, ge=20, description="training images per subject")
    n_test: int = Field(200, ge=10, description="test images (shared by all subjects)")
    image_size: int = Field(128, ge=32)
    seed: int = Field(0, description="generator seed (independent of the run's seed)")


def _demo(params: DemoParams, context) -> AlgonautsReader:
    from .demo import ensure_demo_dataset

    root = ensure_demo_dataset(
        context.cache_dir / "demo-data", subjects=tuple(range(1, params.n_subjects + 1)),
        n_train=params.n_train, n_test=params.n_test, image_size=params.image_size,
        seed=params.seed, progress=context.show_progress)
    info = json.loads((root / "demo_info.json").read_text())
    return AlgonautsReader(root, metadata={"dataset": "demo",
                                           "visual_field_deg": info["visual_field_deg"]})


class FolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="folder with one folder per subject (docs/datasets.md)")
    check_values: bool = Field(True, description="scan every response file for NaN / inf on load")

    @field_validator("root")
    @classmethod
    def _root_exists(cls, root: Path, info: ValidationInfo) -> Path:
        return _check_root(root, info, "one folder per subject (docs/datasets.md)")


def _folder(params: FolderParams, context) -> FolderDataset:
    return FolderDataset(_absolute(params.root, context), params.check_values)


COMPONENTS = [
    Component("algonauts2023", _algonauts, AlgonautsParams,
              "NSD as packaged by the Algonauts 2023 challenge (subjXX/training_split, test_split, roi_masks)"),
    Component("demo", _demo, DemoParams,
              "embedded synthetic dataset in the Algonauts layout on fsaverage5, generated on first use"),
    Component("folder", _folder, FolderParams,
              "your own data: images, responses (.npy/.h5/.nc), optional units, ROIs, trials "
              "(surface or volume; docs/datasets.md)"),
]
