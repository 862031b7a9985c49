"""Hook registration and discovery: entry points, modules, .py files, clashes, broken plugins."""

from __future__ import annotations

import textwrap
import types

import pytest

import neuroenc
from neuroenc import Component, hookimpl
from neuroenc.core.plugins import PluginError, PluginManager, PluginWarning, UnknownComponentError


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def _backbone(name: str) -> Component:
    return Component(name, lambda params, ctx: ("built", name), description=f"test {name}")


def test_builtins_are_found_through_the_entry_point_group(manager):
    assert "builtins" in manager.plugin_names()
    assert {"demo", "algonauts2023"} <= set(manager.components("dataset"))
    timm = manager.get("image_backbone", "timm")
    assert timm.provider == "builtins" and timm.kind == "image_backbone"
    assert timm.version == neuroenc.__version__
    assert set(manager.components("metric")) == {"pearson", "r2", "noise_normalized"}
    assert "frozen-features" in manager.components("recipe")
    assert "ridge" in manager.components("voxel_mapper")


def test_every_kind_has_a_documented_hook():
    from neuroenc import hookspecs
    from neuroenc.records import KINDS

    for kind, hook in KINDS.items():
        fn = getattr(hookspecs, hook)
        assert fn.__doc__ and len(fn.__doc__.split()) > 20, f"hook {hook} is not documented"
    assert {"captioner", "text_encoder", "image_backbone", "voxel_mapper", "alignment_loss"} <= set(KINDS)


def test_registered_object_provides_components(pm):
    pm.register(_plugin(neuroenc_image_backbones=lambda: [_backbone("a"), _backbone("b")]), "mine", "1.2")
    comps = pm.components("image_backbone")
    assert sorted(comps) == ["a", "b"]
    assert comps["a"].provider == "mine" and comps["a"].version == "1.2"
    assert comps["a"].build({}, None) == ("built", "a")


def test_plugin_from_py_file(pm, tmp_path):
    (tmp_path / "my_backbone.py").write_text(textwrap.dedent("""
        from neuroenc import Component, hookimpl

        @hookimpl
        def neuroenc_image_backbones():
            return [Component("file-backbone", lambda p, c: "ok", description="from a file")]
    """))
    name = pm.load_plugin("my_backbone.py", base_dir=tmp_path)
    assert name == "my_backbone"
    assert pm.get("image_backbone", "file-backbone").provider == "my_backbone"


def test_plugin_from_module_name(pm, tmp_path, monkeypatch):
    pkg = tmp_path / "labplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from neuroenc import Component, hookimpl\n__version__ = '0.3'\n"
        "@hookimpl\ndef neuroenc_metrics():\n"
        "    return [Component('mae', lambda p, c: None, description='x')]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm.load_plugin("labplugin")
    assert pm.get("metric", "mae").version == "0.3"


def test_missing_plugin_file_and_module_are_errors(pm, tmp_path):
    with pytest.raises(PluginError, match="not found"):
        pm.load_plugin("nothere.py", base_dir=tmp_path)
    with pytest.raises(PluginError, match="could not be imported"):
        pm.load_plugin("no_such_module_xyz")


def test_plugin_file_that_fails_to_import_names_the_file(pm, tmp_path):
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match=r"bad\.py failed to import: RuntimeError: boom"):
        pm.load_plugin(str(tmp_path / "bad.py"))


def test_duplicate_name_names_both_providers(pm):
    pm.register(_plugin(neuroenc_image_backbones=lambda: [_backbone("vit")]), "first")
    pm.register(_plugin(neuroenc_image_backbones=lambda: [_backbone("vit")]), "second")
    with pytest.raises(PluginError) as exc:
        pm.components("image_backbone")
    assert "'vit'" in str(exc.value) and "'first'" in str(exc.value) and "'second'" in str(exc.value)


def test_same_name_in_different_kinds_is_fine(pm):
    pm.register(_plugin(neuroenc_image_backbones=lambda: [_backbone("x")],
                        neuroenc_text_encoders=lambda: [_backbone("x")]), "p")
    assert "x" in pm.components("image_backbone") and "x" in pm.components("text_encoder")


def test_broken_hook_warns_and_others_still_load(pm):
    def boom():
        raise ZeroDivisionError("oops")
    pm.register(_plugin(neuroenc_image_backbones=boom), "broken")
    pm.register(_plugin(neuroenc_image_backbones=lambda: [_backbone("fine")]), "good")
    with pytest.warns(PluginWarning, match=r"plugin 'broken'.*ZeroDivisionError: oops"):
        comps = pm.components("image_backbone")
    assert list(comps) == ["fine"]


def test_broken_hook_is_an_error_when_strict():
    pm = PluginManager(strict=True, load_entrypoints=False)
    pm.register(_plugin(neuroenc_image_backbones=lambda: ["not a component"]), "wrongtype")
    with pytest.raises(PluginError, match="returned str, expected neuroenc.records.Component"):
        pm.components("image_backbone")


def test_broken_entry_point_warns_and_builtins_still_load(monkeypatch):
    from importlib.metadata import EntryPoint

    import neuroenc.core.plugins as plugins_mod

    real = plugins_mod.entry_points

    def fake_entry_points(group):
        return list(real(group=group)) + [
            EntryPoint(name="broken-ep", value="no_such_module_abc:plugin", group=group)]
    monkeypatch.setattr(plugins_mod, "entry_points", fake_entry_points)
    with pytest.warns(PluginWarning, match="'broken-ep'.*failed to import"):
        pm = PluginManager()
    assert "timm" in pm.components("image_backbone")
    with pytest.raises(PluginError, match="broken-ep"):
        PluginManager(strict=True)


def test_blocked_plugin_is_not_loaded():
    pm = PluginManager(blocked=["builtins"])
    assert "builtins" not in pm.plugin_names() and "llm-vem" in pm.plugin_names()
    assert "timm" not in pm.components("image_backbone")
    assert "eva02" in pm.components("image_backbone")
    everything = PluginManager(blocked=["builtins", "llm-vem", "baselines"])
    assert everything.components("image_backbone") == {}


def test_an_installed_plugin_named_again_in_a_registry_is_not_registered_twice(manager):
    before = manager.plugin_names()
    manager.load_plugin("neuroenc_llmvem")
    assert manager.plugin_names() == before
    assert manager.get("recipe", "llm-vem").provider == "llm-vem"


def test_unknown_component_suggests_the_closest_name(manager):
    with pytest.raises(UnknownComponentError) as exc:
        manager.get("image_backbone", "timmm")
    assert "known: eva02, timm" in str(exc.value) and "did you mean 'timm'?" in str(exc.value)


def test_hookimpl_with_a_typo_in_the_hook_name_is_rejected():
    pm = PluginManager(strict=True, load_entrypoints=False)
    with pytest.raises(PluginError, match="neuroenc_backbones"):
        pm.register(_plugin(neuroenc_backbones=lambda: []), "typo")
