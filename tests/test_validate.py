"""`neuroenc validate` runs no plugin code it was not asked to, and catches what run would hit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc.core.config import RegistryError, load_registry, resolve_registry
from neuroenc.core.plugins import PluginError

runner = CliRunner()

PLUGIN = """
from pathlib import Path
Path(__file__).with_name("marker").write_text("plugin code ran")

import neuroenc
from neuroenc_builtins.recipes import COMPONENTS as _RECIPES

@neuroenc.hookimpl
def neuroenc_recipes():
    frozen = next(c for c in _RECIPES if c.name == "frozen-features")
    return [neuroenc.Component("lab-ridge", frozen.factory, frozen.params, "a lab's recipe")]
"""


def _registry(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_validate_does_not_import_the_registrys_plugins(tmp_path):
    (tmp_path / "lab.py").write_text(PLUGIN)
    registry = _registry(tmp_path, """
        name: t
        plugins: [lab.py]
        dataset: {kind: demo, subjects: [1]}
        models:
          m: {recipe: lab-ridge, backbone: {name: timm, model_name: resnet18, pretrained: false}}
    """)
    result = runner.invoke(app, ["validate", str(registry)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "marker").exists()
    assert "not imported: the registry's plugins (lab.py)" in result.output
    assert "not checked:" in result.output and "models.m.recipe: unknown recipe 'lab-ridge'" \
        in result.output
    loaded = runner.invoke(app, ["validate", str(registry), "--load-plugins"])
    assert loaded.exit_code == 0, loaded.output
    assert (tmp_path / "marker").read_text() == "plugin code ran"
    assert "not checked" not in loaded.output


def test_validate_catches_timm_names_layers_and_the_dataset_root(tmp_path, manager):
    (tmp_path / "data").mkdir()
    registry = _registry(tmp_path, """
        name: t
        dataset: {kind: algonauts2023, root: dta}
        models:
          a: {recipe: frozen-features, backbone: {name: timm, model_name: resnet81, pretrained: false}}
          b: {recipe: frozen-features, backbone: {name: timm, model_name: resnet18, pretrained: false,
                                                  layers: [1, 5]}}
          c: {recipe: frozen-features, backbone: {name: timm, model_name: resnet18.a1_in1k,
                                                  pretrained: false, layers: [-5, 4]}}
    """)
    with pytest.raises(RegistryError) as info:
        resolve_registry(load_registry(registry), manager)
    source = str(registry)
    message = str(info.value)
    assert (f"{source}: dataset.root: {tmp_path / 'dta'}: dataset root not found; expected a "
            f"folder holding subj01 .. subj08 (did you mean '{tmp_path}/data'?)") in message
    assert (f"{source}: models.a.backbone.model_name: unknown timm model 'resnet81' (did you mean "
            "'resnet18'?)") in message
    assert (f"{source}: models.b.backbone.layers: layers [5] out of range for 'resnet18', which "
            "has 5 feature levels (indices -5..4)") in message
    assert "models.c" not in message  # a pretrained tag and in-range negative indices are fine


def test_a_plugin_file_shadowing_an_installed_plugin_is_an_error(tmp_path, manager):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "baselines.py").write_text(PLUGIN)
    with pytest.raises(PluginError, match=r"plugin file 'lab/baselines.py' .* would be named "
                                          r"'baselines', but plugin 'baselines' is already loaded"):
        manager.load_plugin("lab/baselines.py", base_dir=tmp_path)
    assert not (tmp_path / "lab" / "marker").exists()
