"""The docs' examples work: the plugin in docs/writing-plugins.md, every hook documented."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from neuroenc.core.config import load_registry, resolve_registry
from neuroenc.core.context import RunContext

ROOT = Path(__file__).resolve().parents[1]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def test_plugin_example_from_the_docs_validates_and_runs(tmp_path, manager):
    doc = ROOT / "docs" / "writing-plugins.md"
    python, registry_yaml = _blocks(doc, "python")[0], _blocks(doc, "yaml")[0]
    (tmp_path / "my_backbone.py").write_text(python)
    (tmp_path / "registry.yaml").write_text("name: doc\n" + registry_yaml)
    registry = resolve_registry(load_registry(tmp_path / "registry.yaml"), manager)
    assert manager.get("image_backbone", "tiny-convnet").provider == "my_backbone"

    context = RunContext(manager=manager, cache_dir=tmp_path / "cache", show_progress=False)
    backbone = context.build("image_backbone", registry.models["ridge-tiny"].params["backbone"])
    x = backbone.preprocess(Image.fromarray(np.zeros((80, 80, 3), np.uint8)))[None]
    assert backbone.forward_features(x)["conv"].shape == (1, 32)

    (tmp_path / "registry.yaml").write_text(
        "name: doc\n" + registry_yaml.replace("width: 32", "widht: 32"))
    try:
        resolve_registry(load_registry(tmp_path / "registry.yaml"), manager)
    except ValueError as exc:
        assert "unknown key 'widht'" in str(exc) and "did you mean 'width'?" in str(exc)
    else:
        raise AssertionError("a misspelt parameter passed validation")


def test_architecture_doc_lists_every_hook():
    from neuroenc.records import KINDS

    text = (ROOT / "docs" / "architecture.md").read_text()
    for hook in KINDS.values():
        assert f"`{hook}`" in text, f"docs/architecture.md does not mention {hook}"
