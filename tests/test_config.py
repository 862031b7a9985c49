"""registry.yaml validation: every error names the file, the YAML path, the value and the choices."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from neuroenc.core.config import RegistryError, load_registry, resolve_registry

ROOT = Path(__file__).resolve().parents[1]

VALID = """
name: t
dataset: {kind: demo, subjects: [1], n_train: 50, n_test: 20}
models:
  ridge:
    recipe: frozen-features
    backbone: {name: timm, model_name: resnet18, pretrained: false}
    mapper: {name: ridge, n_folds: 3}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _problems(tmp_path, text, manager) -> RegistryError:
    with pytest.raises(RegistryError) as exc:
        resolve_registry(load_registry(_write(tmp_path, text)), manager)
    return exc.value


@pytest.mark.parametrize("name", ["registry.yaml", "registry.algonauts.yaml"])
def test_shipped_registries_validate(name, manager, tmp_path):
    # A copy beside a dataset folder where the registry expects one: validate checks it
    # exists (and fails without it, as the second half shows).
    copy = tmp_path / name
    copy.write_text((ROOT / name).read_text())
    (tmp_path / "data" / "algonauts_2023_challenge_data").mkdir(parents=True)
    registry = resolve_registry(load_registry(copy), manager)
    assert registry.models
    if name == "registry.algonauts.yaml":
        (tmp_path / "data" / "algonauts_2023_challenge_data").rmdir()
        with pytest.raises(RegistryError) as info:
            resolve_registry(load_registry(copy), manager)
        assert [path for path, _ in info.value.problems] == ["dataset.root"]


def test_valid_registry_fills_defaults(tmp_path, manager):
    registry = resolve_registry(load_registry(_write(tmp_path, VALID)), manager)
    assert registry.evaluation.metrics == ["pearson", "r2", "noise_normalized"]
    assert registry.compute.device == "auto"
    assert registry.models["ridge"].params["backbone"]["model_name"] == "resnet18"
    assert registry.base_dir == tmp_path


def test_unknown_backbone_names_path_value_and_suggestion(tmp_path, manager):
    err = _problems(tmp_path, VALID.replace("name: timm", "name: timmm"), manager)
    msg = str(err)
    assert "registry.yaml: models.ridge.backbone.name: unknown image backbone 'timmm'" in msg
    assert "known: eva02, timm" in msg and "(did you mean 'timm'?)" in msg


def test_bad_component_parameter_is_reported_with_its_path(tmp_path, manager):
    err = _problems(tmp_path, VALID.replace("n_folds: 3", "n_folds: one"), manager)
    assert ("models.ridge.mapper.n_folds", ) == tuple(p for p, _ in err.problems)
    assert "'one'" in str(err)


def test_unknown_component_key_suggests_the_right_one(tmp_path, manager):
    err = _problems(tmp_path, VALID.replace("model_name:", "modelname:"), manager)
    assert "models.ridge.backbone.modelname: unknown key 'modelname'" in str(err)
    assert "did you mean 'model_name'?" in str(err)


def test_all_problems_reported_together(tmp_path, manager):
    text = VALID.replace("kind: demo", "kind: demoo").replace("recipe: frozen-features",
                                                            "recipe: frozen")
    err = _problems(tmp_path, text, manager)
    paths = [p for p, _ in err.problems]
    assert paths == ["dataset.kind", "models.ridge.recipe"]
    assert "did you mean 'demo'?" in str(err) and "did you mean 'frozen-features'?" in str(err)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(RegistryError) as exc:
        load_registry(_write(tmp_path, VALID + "modles: {}\n"))
    assert "modles: unknown key 'modles'" in str(exc.value)
    assert "did you mean 'models'?" in str(exc.value)


def test_wrong_type_and_missing_key(tmp_path):
    with pytest.raises(RegistryError) as exc:
        load_registry(_write(tmp_path, "name: t\nseed: many\n"))
    msg = str(exc.value)
    assert "seed: Input should be a valid integer" in msg and "'many'" in msg
    assert "models: Field required" in msg


def test_bad_device(tmp_path):
    with pytest.raises(RegistryError, match=r"compute.device: .*unknown device 'gpu'"):
        load_registry(_write(tmp_path, VALID + "compute: {device: gpu}\n"))


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(RegistryError) as exc:
        load_registry(_write(tmp_path, "name: t\nmodels: [a, b\n"))
    assert "registry.yaml" in str(exc.value) and "line 3" in str(exc.value)
    assert "invalid YAML" in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="nope.yaml: file not found"):
        load_registry(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(RegistryError, match="expected a mapping at the top level, found list"):
        load_registry(_write(tmp_path, "- a\n- b\n"))


def test_unknown_metric(tmp_path, manager):
    err = _problems(tmp_path, VALID + "evaluation: {metrics: [pearson, pearsn]}\n", manager)
    assert err.problems[0][0] == "evaluation.metrics.1"


def test_registry_plugin_file_is_loaded_relative_to_registry(tmp_path, manager):
    (tmp_path / "myplug.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel
        from neuroenc import Component, hookimpl

        class P(BaseModel):
            depth: int = 2

        @hookimpl
        def neuroenc_image_backbones():
            return [Component("custom-net", lambda p, c: p, P, "test")]
    """))
    text = VALID.replace("name: timm, model_name: resnet18, pretrained: false",
                         "name: custom-net, depth: 5")
    registry = resolve_registry(load_registry(_write(tmp_path, "plugins: [myplug.py]\n" + text)),
                                manager)
    assert manager.get("image_backbone", "custom-net").provider == "myplug"
    assert registry.models["ridge"].params["backbone"]["depth"] == 5


def test_registry_plugin_that_is_missing(tmp_path, manager):
    err = _problems(tmp_path, "plugins: [gone.py]\n" + VALID, manager)
    assert err.problems[0][0] == "plugins.0" and "not found" in err.problems[0][1]


def test_component_string_shorthand(tmp_path, manager):
    registry = resolve_registry(load_registry(_write(tmp_path, VALID.replace(
        "mapper: {name: ridge, n_folds: 3}", "mapper: ridge"))), manager)
    assert registry.models["ridge"].params["mapper"] == "ridge"
