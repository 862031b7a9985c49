"""Dataset readers: the Algonauts 2023 challenge layout, and the embedded demo data."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from neuroenc import Component
from neuroenc.data.algonauts import DatasetError, SubjectData, available_subjects, read_subject


class AlgonautsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="folder holding subj01 .. subj08 (the challenge download)")
    check_values: bool = Field(True, description="scan every fMRI file for NaN / inf on load")


class AlgonautsReader:
    """Reads subjects laid out as the Algonauts 2023 challenge distributes them."""

    def __init__(self, root: Path, check_values: bool = True):
        self.root = Path(root)
        self.check_values = check_values
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found; expected a folder "
                               "holding subj01 .. subj08")

    def subjects(self) -> list[str]:
        return available_subjects(self.root)

    def load(self, subject: str) -> SubjectData:
        return read_subject(self.root, subject, check_values=self.check_values)


def _algonauts(params: AlgonautsParams, context) -> AlgonautsReader:
    root = params.root.expanduser()
    if not root.is_absolute():
        root = context.base_dir / root
    return AlgonautsReader(root, params.check_values)


class DemoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_subjects: int = Field(2, ge=1, le=8)
    n_train: int = Field(1000, ge=20, description="training images per subject")
    n_test: int = Field(200, ge=10, description="test images (shared by all subjects)")
    image_size: int = Field(128, ge=32)
    seed: int = Field(0, description="generator seed (independent of the run's seed)")


def _demo(params: DemoParams, context) -> AlgonautsReader:
    from neuroenc.data.demo import ensure_demo_dataset

    root = ensure_demo_dataset(
        context.cache_dir / "demo-data", subjects=tuple(range(1, params.n_subjects + 1)),
        n_train=params.n_train, n_test=params.n_test, image_size=params.image_size,
        seed=params.seed, progress=context.show_progress)
    return AlgonautsReader(root)


COMPONENTS = [
    Component("algonauts2023", _algonauts, AlgonautsParams,
              "NSD as packaged by the Algonauts 2023 challenge (subjXX/training_split, test_split, roi_masks)"),
    Component("demo", _demo, DemoParams,
              "embedded synthetic dataset in the Algonauts layout on fsaverage5, generated on first use"),
]
