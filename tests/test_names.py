"""Names that become folders cannot leave the results folder, clash, or repeat (issue 9.4)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from neuroenc.core.config import RegistryError, load_registry
from neuroenc.core.names import name_problem

MODEL = """
    recipe: frozen-features
    backbone: {name: timm, model_name: resnet18, pretrained: false}
    mapper: ridge
"""


def _registry(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(RegistryError) as info:
        load_registry(_registry(tmp_path, text))
    return str(info.value)


@pytest.mark.parametrize("name", ["../../escape", "a/b", "a\\b", "..", "x..y", "a\x00b", "tab\tx",
                                  "CON", "nul.txt", ".hidden", "trailing.", " padded", ""])
def test_bad_names(name):
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["ridge-effnet", "llm-vem@alignment.weight=0.1", "model_2",
                                  "a.b", "Modèle"])
def test_good_names(name):
    assert name_problem(name) is None


def test_model_name_escaping_the_results_folder(tmp_path):
    message = _error(tmp_path, '''
        name: t
        models:
          ../../escape:''' + textwrap.indent(MODEL, "        "))
    assert message == (f"{tmp_path / 'registry.yaml'}: models.../../escape: model name "
                       "'../../escape': contains '/' (names become folder names); use letters, "
                       "digits, '-', '_', '.', '@', '=' and ','")


def test_experiment_name_and_sweep_values(tmp_path):
    message = _error(tmp_path, '''
        name: ../../x
        models:
          ridge:''' + textwrap.indent(MODEL, "        ") + '''
            sweep:
              backbone.model_name: [resnet18, ../resnet34]
        ''')
    assert "registry.yaml: name: experiment name '../../x': contains '/'" in message
    assert "models.ridge.sweep.backbone.model_name.1: sweep value '../resnet34'" in message


def test_repeated_yaml_key_is_an_error(tmp_path):
    message = _error(tmp_path, '''
        name: t
        models:
          ridge:''' + textwrap.indent(MODEL, "        ") + '''
          ridge:''' + textwrap.indent(MODEL, "        "))
    assert "line 9, column 3: invalid YAML: key 'ridge' appears twice (first at line 4)" in message


def test_model_named_like_a_sweep_point(tmp_path):
    message = _error(tmp_path, '''
        name: t
        models:
          ridge:''' + textwrap.indent(MODEL, "        ") + '''
            sweep: {mapper.n_folds: [3, 5]}
          ridge@mapper.n_folds=5:''' + textwrap.indent(MODEL, "        "))
    assert ("models.ridge@mapper.n_folds=5: model 'ridge@mapper.n_folds=5' and sweep point "
            "mapper.n_folds=5 of model 'ridge' would both write models/ridge@mapper.n_folds=5/ "
            "(the same folder)") in message


def test_names_differing_in_case_clash(tmp_path):
    message = _error(tmp_path, '''
        name: t
        models:
          ridge:''' + textwrap.indent(MODEL, "        ") + '''
          Ridge:''' + textwrap.indent(MODEL, "        "))
    assert "differ only in case" in message


def test_repeated_subject_is_an_error(tmp_path):
    message = _error(tmp_path, '''
        name: t
        dataset: {kind: demo, subjects: [1, subj01]}
        models:
          ridge:''' + textwrap.indent(MODEL, "        "))
    assert "dataset.subjects: subject 'subj01' is listed twice (as 1 and 'subj01')" \
        in message
