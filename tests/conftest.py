"""Shared fixtures: plugin managers, and a small demo dataset generated once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/algonauts_fixture.py

# Never reach for the network from tests; model hubs fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def pm():
    """A plugin manager with no plugins loaded (pluggy's own tests have the same fixture)."""
    from neuroenc.core.plugins import PluginManager

    return PluginManager(load_entrypoints=False)


@pytest.fixture
def manager():
    """A plugin manager with the installed plugins (the built-ins) loaded."""
    from neuroenc.core.plugins import PluginManager

    return PluginManager(strict=True)


@pytest.fixture(scope="session")
def small_demo_root(tmp_path_factory) -> Path:
    """A small demo dataset (2 subjects, 120 train / 40 test images), generated once."""
    from neuroenc_builtins.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    return generate_demo_dataset(root, subjects=(1, 2), n_train=120, n_test=40, image_size=64,
                                 seed=3)
