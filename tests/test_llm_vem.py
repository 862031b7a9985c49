"""LLM-VEM components alone, the lambda = 0 identity, two-stage training, resume, sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuroenc.core.config import ComponentRef, ModelConfig, expand_model, set_dotted
from neuroenc.core.context import RunContext
from neuroenc_builtins.algonauts import read_subject
from neuroenc_llmvem.heads import PCAHead, PCAHeadParams, pca_basis
from neuroenc_llmvem.losses import ContrastiveLoss, ContrastiveParams, info_nce

TINY_EVA = {"name": "eva02", "model_name": "eva02_tiny_patch14_224", "pretrained": False,
            "image_size": 28, "layers": [0, 1], "model_kwargs": {"depth": 2}}


def _context(manager, tmp_path, **kw) -> RunContext:
    return RunContext(manager=manager, cache_dir=tmp_path / "cache", seed=0, batch_size=16,
                      show_progress=False, **kw)


# -- contrastive loss -------------------------------------------------------------------
def test_info_nce_matches_a_hand_computed_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    scale = 2.0
    # cosine similarities: [[1, 1/sqrt2], [0, 1/sqrt2]] times the scale
    s = scale * np.array([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]])
    rows = -(s[0, 0] - np.log(np.exp(s[0]).sum())) - (s[1, 1] - np.log(np.exp(s[1]).sum()))
    cols = -(s[0, 0] - np.log(np.exp(s[:, 0]).sum())) - (s[1, 1] - np.log(np.exp(s[:, 1]).sum()))
    expected = 0.5 * (rows / 2 + cols / 2)
    assert info_nce(img, txt, scale).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_is_lower_for_aligned_pairs_and_carries_lambda():
    torch.manual_seed(0)
    txt = torch.randn(8, 16)
    loss = ContrastiveLoss(ContrastiveParams(weight=0.05, temperature=0.1))
    assert loss.weight == 0.05
    aligned = loss(txt + 0.01 * torch.randn(8, 16), txt)
    shuffled = loss(txt[torch.randperm(8)], txt)
    assert aligned < shuffled
    assert not any(p.requires_grad for p in loss.parameters())
    learnable = ContrastiveLoss(ContrastiveParams(learnable_temperature=True))
    assert [n for n, _ in learnable.named_parameters()] == ["log_scale"]
    with pytest.raises(ValueError, match="expected the same"):
        info_nce(torch.zeros(4, 3), torch.zeros(4, 5), 1.0)


# -- PCA head ---------------------------------------------------------------------------
def test_pca_layer_is_initialised_from_the_training_pca_and_frozen(manager, tmp_path):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    Y = rng.normal(size=(60, 30)).astype(np.float32)
    head = PCAHead(PCAHeadParams(n_components=10, low_rank=8), _context(manager, tmp_path))
    module = head.build_module([(12,)], Y)
    ref = PCA(n_components=10).fit(Y)
    np.testing.assert_allclose(module.pca.weight.detach().numpy(), ref.components_.T, atol=1e-5)
    np.testing.assert_allclose(module.pca.bias.detach().numpy(), ref.mean_, atol=1e-5)
    assert not module.pca.weight.requires_grad
    # the frozen layer maps exact PCA coefficients back to the PCA reconstruction
    coeffs = torch.from_numpy(ref.transform(Y).astype(np.float32))
    np.testing.assert_allclose(module.pca(coeffs).detach().numpy(),
                               ref.inverse_transform(ref.transform(Y)), atol=1e-4)


def test_per_hemisphere_pca_is_block_diagonal(manager, tmp_path):
    Y = np.random.default_rng(1).normal(size=(40, 25)).astype(np.float32)
    head = PCAHead(PCAHeadParams(n_components=8, scope="hemisphere"), _context(manager, tmp_path))
    w = head.build_module([(5,)], Y, [10, 15]).pca.weight.detach().numpy()  # (25, 8)
    assert np.abs(w[:10, 4:]).max() == 0 and np.abs(w[10:, :4]).max() == 0
    comp, _ = pca_basis(Y[:, :10], 4)
    np.testing.assert_allclose(np.abs(w[:10, :4]), np.abs(comp.T), atol=1e-5)


def test_pca_head_fitted_alone_on_features_learns(manager, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    W = rng.normal(size=(20, 40)).astype(np.float32)
    Y = X @ W + 0.1 * rng.normal(size=(300, 40)).astype(np.float32)
    head = PCAHead(PCAHeadParams(n_components=20, low_rank=64, dropout=0.0, epochs=60, lr=3e-3),
                   _context(manager, tmp_path)).fit(X[:250], Y[:250])
    pred = head.predict(X[250:])
    from neuroenc.evaluation.metrics import r2_score

    assert np.median(r2_score(Y[250:], pred)) > 0.8


def test_token_maps_go_through_a_token_wise_reduction(manager, tmp_path):
    head = PCAHead(PCAHeadParams(n_components=4, low_rank=6, token_channels=3),
                   _context(manager, tmp_path))
    module = head.build_module([(5, 7), (9,)], np.random.default_rng(0).normal(size=(20, 11)))
    pred, shared = module([torch.randn(4, 5, 7), torch.randn(4, 9)])
    assert pred.shape == (4, 11) and shared.shape == (4, 6)
    assert module.layers[0].low_rank.in_features == 5 * 3


# -- EVA02 ------------------------------------------------------------------------------
def test_eva02_tokens_from_several_blocks(manager, tmp_path):
    ctx = _context(manager, tmp_path)
    backbone = ctx.build("image_backbone", {**TINY_EVA, "pooling": "all"})
    out = backbone.forward_features(torch.randn(3, 3, 28, 28))
    assert list(out) == ["blocks.0", "blocks.1"]
    assert out["blocks.0"].shape == (3, 4, 192)  # 2 x 2 patches of 14 px
    cls = ctx.build("image_backbone", {**TINY_EVA, "pooling": "cls"})
    assert cls.forward_features(torch.randn(3, 3, 28, 28))["blocks.1"].shape == (3, 192)
    with pytest.raises(ValueError, match="not an EVA02 model"):
        ctx.build("image_backbone", {**TINY_EVA, "model_name": "resnet18"})


# -- training ---------------------------------------------------------------------------
def _recipe(alignment, stages=None, **kw):
    return {"name": "llm-vem", "backbone": TINY_EVA,
            "mapper": {"name": "pca-head", "n_components": 16, "low_rank": 32, "dropout": 0.1},
            "captioner": "dataset-captions", "text_encoder": "sentence-transformers",
            "alignment": alignment, "validation_fraction": 0.2,
            "stages": stages or [
                {"name": "head", "train": ["head"], "epochs": 4, "lr": 3e-3, "warmup_epochs": 0},
                {"name": "finetune", "train": ["head", "backbone.blocks.*.attn.*"], "epochs": 2,
                 "lr": 1e-4, "warmup_epochs": 0, "min_crop_scale": 0.8}],
            **kw}


def _fit_predict(manager, tmp_path, data, recipe, name):
    ctx = _context(manager, tmp_path / name)
    model = ctx.build("recipe", recipe)
    model.fit(data, np.arange(len(data.train_images)))
    return model, model.predict(data, "test")


def test_lambda_zero_is_exactly_the_model_without_alignment(manager, tmp_path, small_demo_root):
    data = read_subject(small_demo_root, "subj01")
    stages = [{"name": "head", "train": ["head"], "epochs": 2, "lr": 3e-3, "warmup_epochs": 0}]
    _, without = _fit_predict(manager, tmp_path, data, _recipe(None, stages), "none")
    _, zero = _fit_predict(manager, tmp_path, data,
                           _recipe({"name": "contrastive", "weight": 0.0}, stages), "zero")
    np.testing.assert_array_equal(without, zero)


def test_two_stage_training_improves_over_its_first_epoch(manager, tmp_path, small_demo_root):
    data = read_subject(small_demo_root, "subj01")
    model, pred = _fit_predict(manager, tmp_path, data, _recipe(None, early_stopping_patience=None),
                               "two")
    history = model.history
    assert [h["stage"] for h in history] == ["head"] * 4 + ["finetune"] * 2
    scores = [h["median_r2"] for h in history]
    assert max(scores[1:]) > scores[0]
    assert pred.shape == (len(data.test_images), sum(data.n_vertices.values()))
    # the backbone's attention weights changed in stage 2, nothing else in the backbone did
    from neuroenc.core.context import seed_everything

    seed_everything(0)  # as fit() does right before it builds the backbone
    fresh = _context(manager, tmp_path / "fresh").build("image_backbone", TINY_EVA).module
    changed = {n for n, p in model.net.backbone.named_parameters()
               if not torch.equal(p, dict(fresh.named_parameters())[n])}
    assert changed and all(".attn." in n for n in changed)


def test_training_resumes_after_a_crash_and_reuses_a_finished_run(manager, tmp_path,
                                                                   small_demo_root, monkeypatch):
    from neuroenc_llmvem import recipe as recipe_mod

    data = read_subject(small_demo_root, "subj01")
    recipe = _recipe(None, early_stopping_patience=None)
    _, reference = _fit_predict(manager, tmp_path, data, recipe, "reference")

    real = recipe_mod._validation_score
    calls = {"n": 0}

    def crash_in_stage_two(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # the second epoch of the fine-tuning stage
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(recipe_mod, "_validation_score", crash_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        _fit_predict(manager, tmp_path, data, recipe, "crash")
    monkeypatch.setattr(recipe_mod, "_validation_score", real)
    resumed, pred = _fit_predict(manager, tmp_path, data, recipe, "crash")
    np.testing.assert_allclose(pred, reference, rtol=1e-5, atol=1e-5)
    assert len(resumed.history) == 6

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training ran again")
    monkeypatch.setattr(recipe_mod.LLMVEMModel, "_run_stage", no_training)
    _, again = _fit_predict(manager, tmp_path, data, recipe, "crash")
    np.testing.assert_array_equal(again, pred)


def test_stage_selecting_nothing_is_an_error(manager, tmp_path, small_demo_root):
    data = read_subject(small_demo_root, "subj01")
    recipe = _recipe(None, [{"name": "x", "train": ["backbone.nothing.*"], "epochs": 1, "lr": 1e-3}])
    with pytest.raises(ValueError, match="select no parameter"):
        _fit_predict(manager, tmp_path, data, recipe, "bad")


def test_ridge_cannot_be_trained_end_to_end(manager, tmp_path, small_demo_root):
    data = read_subject(small_demo_root, "subj01")
    with pytest.raises(ValueError, match="cannot be trained end to end"):
        _fit_predict(manager, tmp_path, data, {**_recipe(None), "mapper": "ridge"}, "ridge")


# -- sweeps -----------------------------------------------------------------------------
def test_set_dotted_paths():
    params = {"alignment": "contrastive", "stages": [{"lr": 1.0}, {"lr": 2.0}]}
    out = set_dotted(params, "alignment.weight", 0.1)
    assert out["alignment"] == {"name": "contrastive", "weight": 0.1}
    assert set_dotted(params, "stages.1.lr", 5.0)["stages"][1]["lr"] == 5.0
    assert params["alignment"] == "contrastive"  # the input is not modified
    with pytest.raises(KeyError, match="no list item '7'"):
        set_dotted(params, "stages.7.lr", 1.0)


def test_sweep_expands_the_grid():
    model = ModelConfig.model_validate({"recipe": "llm-vem", "alignment": "contrastive",
                                        "sweep": {"alignment.weight": [0, 0.1], "seed_x": ["a"]}})
    variants = expand_model("vem", model)
    assert [v.name for v in variants] == ["vem@alignment.weight=0,seed_x=a",
                                          "vem@alignment.weight=0.1,seed_x=a"]
    assert variants[1].params["alignment"] == {"name": "contrastive", "weight": 0.1}
    assert variants[1].point == {"alignment.weight": 0.1, "seed_x": "a"}
    assert all(v.base == "vem" for v in variants)
    assert isinstance(ComponentRef.model_validate(variants[0].params["alignment"]), ComponentRef)


class _Payload:
    """Unpickling this writes ``marker`` (a harmless stand-in for code run from a cache)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_poisoned_training_checkpoint_is_refused(manager, tmp_path, small_demo_root):
    data = read_subject(small_demo_root, "subj01")
    stages = [{"name": "head", "train": ["head"], "epochs": 1, "lr": 3e-3, "warmup_epochs": 0}]
    ctx = _context(manager, tmp_path)
    model = ctx.build("recipe", _recipe(None, stages))
    train_index, val_index = np.arange(10, len(data.train_images)), np.arange(10)
    ckpt = model._checkpoint_path(data, train_index, val_index)
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    torch.save({"complete": True, "net": _Payload(marker), "history": []}, ckpt)
    with pytest.raises(RuntimeError, match=r"refused to load this training checkpoint"):
        model.fit(data, train_index, validation_index=val_index)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is live: the check above can fail
    assert marker.read_text() == "ran"


def test_no_unrestricted_unpickling_in_the_sources():
    """Every load of a file neuroenc did not just write itself is restricted (issue 9 audit)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("neuroenc/**/*.py"), *root.glob("plugins/**/*.py")]:
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(|"
                         r"torch\.load\((?![^)]*weights_only\s*=\s*True)", line):
                offenders.append(f"{path.relative_to(root)}:{no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_training_checkpoint_key_covers_the_caption_embeddings(manager, tmp_path,
                                                                   small_demo_root):
    data = read_subject(small_demo_root, "subj01")
    stages = [{"name": "head", "train": ["head"], "epochs": 1, "lr": 3e-3, "warmup_epochs": 0}]
    model = _context(manager, tmp_path).build("recipe", _recipe(None, stages))
    train_index = np.arange(len(data.train_images))
    captions = torch.zeros(len(train_index), 8)
    edited = captions.clone()
    edited[3, 0] = 1.0  # one caption changed
    val_index = np.arange(0)
    keys = {model._checkpoint_path(data, train_index, val_index, t) for t in (None, captions, edited)}
    assert len(keys) == 3
    assert model._checkpoint_path(data, train_index, val_index, captions.clone()) in keys


# -- fine-tuning the last blocks on their cached input ----------------------------------
TINY_EFFNET = {"name": "timm", "model_name": "tf_efficientnet_lite0", "pretrained": False,
               "image_size": 64, "layers": [2, 4], "pooling": "map", "map_size": 4}


def test_a_backbone_cut_before_a_block_gives_the_same_features(manager, tmp_path):
    ctx = _context(manager, tmp_path)
    backbone = ctx.build("image_backbone", TINY_EFFNET)
    cut = backbone.split_before(6)
    assert cut.suffix_layers == ["blocks.6"]
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        whole = backbone.forward_features(images)
        after = cut.suffix(cut.forward_features(images)["prefix"])
    torch.testing.assert_close(after["blocks.6"], whole["blocks.6"], rtol=1e-4, atol=1e-5)
    assert backbone.split_before(0) is None  # nothing before the first block to cache
    eva = ctx.build("image_backbone", {**TINY_EVA, "pooling": "all"})
    assert eva.split_before(1) is None       # its blocks take rotary embeddings: no cut


def test_fine_tuning_on_the_cached_block_input_trains_the_same_model(manager, tmp_path,
                                                                     small_demo_root, monkeypatch):
    from neuroenc_builtins.backbones import TimmBackbone

    data = read_subject(small_demo_root, "subj01")
    stages = [{"name": "head", "train": ["head"], "epochs": 1, "lr": 3e-3, "warmup_epochs": 0},
              {"name": "finetune", "train": ["head", "backbone.blocks.6.*"], "epochs": 2,
               "lr": 1e-4, "warmup_epochs": 0}]
    recipe = _recipe(None, stages, backbone={**TINY_EFFNET, "image_size": 32},
                     early_stopping_patience=None)
    cut_model, cut = _fit_predict(manager, tmp_path, data, recipe, "cut")
    assert cut_model._splits and (tmp_path / "cut" / "cache" / "features").is_dir()
    monkeypatch.setattr(TimmBackbone, "split_before", lambda self, block: None)
    whole_model, whole = _fit_predict(manager, tmp_path, data, recipe, "whole")
    assert not any(whole_model._splits.values())
    # the same model up to float rounding (the cut's input is computed in channels-last
    # layout, as all cached features are), which a few optimiser steps amplify a little
    np.testing.assert_allclose(cut, whole, rtol=1e-3, atol=1e-3)
    from neuroenc.core.context import seed_everything

    seed_everything(0)  # as fit() does right before it builds the backbone
    fresh = dict(_context(manager, tmp_path / "fresh").build(
        "image_backbone", {**TINY_EFFNET, "image_size": 32}).module.named_parameters())
    changed = [n for n, p in cut_model.net.backbone.named_parameters()
               if not torch.equal(p, fresh[n])]
    assert changed and all(n.startswith("blocks.6.") for n in changed)
