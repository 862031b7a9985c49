"""Captioners: miniGPT-4 assembled from transformers modules (tiny, random weights, offline),
the generic transformers backend, and the dataset / file captioners."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError


from neuroenc_llmvem.captioners import (
    COMPONENTS, IMAGE_SLOT, CaptionFileCaptioner, CaptionFileParams, DatasetCaptioner,
    DatasetCaptionsParams, MiniGPT4Captioner, MiniGPT4Params, TransformersCaptioner,
    dataset_root_of, nsd_id_from_name, train_tiny_tokenizer)

torch = pytest.importorskip("torch")

#: miniGPT-4's detailed-description request, written out as REFERENCE.md section 1 quotes it
MINIGPT4_FIRST_TURN = ("###Human: <Img><ImageHere></Img> Describe this image in detail. Give as "
                       "many details as possible. Say everything you see. ###Assistant: ")


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"train-{i + 1:04d}_nsd-{i:05d}.png"
        rng = np.random.default_rng(100 + i)
        Image.fromarray(rng.integers(0, 255, (24 + 4 * i, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return _images(tmp_path_factory.mktemp("images"), 4)


def _tiny(**params) -> MiniGPT4Captioner:
    return MiniGPT4Captioner(MiniGPT4Params(tiny_random=True, **{"max_new_tokens": 6, **params}))


@pytest.fixture(scope="module")
def tiny() -> MiniGPT4Captioner:
    captioner = _tiny(batch_size=4)
    captioner.load()
    return captioner


# --------------------------------------------------------------------------------------
# minigpt4: parameters
# --------------------------------------------------------------------------------------

def test_components_and_strict_params():
    assert [c.name for c in COMPONENTS] == ["minigpt4", "dataset-captions", "caption-file"]
    for component in COMPONENTS:
        with pytest.raises(ValidationError, match="Extra inputs"):
            component.params.model_validate({"no_such_key": 1, **(
                {"path": "x.csv"} if component.name == "caption-file" else {})})


@pytest.mark.parametrize("params, message", [
    ({}, "backend 'minigpt4' needs minigpt4_checkpoint and llm"),
    ({"tiny_random": True, "prompt": "Describe this image."}, "must contain <ImageHere> exactly once"),
    ({"tiny_random": True, "prompt_template": "Human: {} {} Assistant:"}, "'{}' exactly once"),
    ({"tiny_random": True, "continue_prompt": "Continue <ImageHere>"}, "must not contain"),
    ({"tiny_random": True, "model": "org/vlm"}, "model: only for backend 'transformers'"),
    ({"backend": "transformers"}, "needs model"),
    ({"backend": "transformers", "model": "x", "llm": "y"}, "llm: only for backend 'minigpt4'"),
    ({"backend": "transformers", "model": "x", "tiny_random": True}, "tiny_random is for backend"),
])
def test_minigpt4_params_are_checked(params, message):
    with pytest.raises(ValidationError, match=message):
        MiniGPT4Params(**params)


def test_missing_local_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="minigpt4_checkpoint: 'nope.pth': no such file"):
        MiniGPT4Captioner(MiniGPT4Params(llm=str(tmp_path), minigpt4_checkpoint="nope.pth",
                                         blip2_model=str(tmp_path)), base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="llm: './vicuna': no such file or folder"):
        MiniGPT4Captioner(MiniGPT4Params(llm="./vicuna", minigpt4_checkpoint="x.pth"),
                          base_dir=tmp_path)


# --------------------------------------------------------------------------------------
# minigpt4: the assembled model
# --------------------------------------------------------------------------------------

def test_tiny_minigpt4_assembles_from_transformers_modules(tiny, images):
    from transformers import Blip2QFormerModel, Blip2VisionModel, LlamaForCausalLM

    parts = tiny.parts
    assert isinstance(parts.vision_model, Blip2VisionModel)
    assert isinstance(parts.qformer, Blip2QFormerModel)
    assert isinstance(parts.llm, LlamaForCausalLM)
    assert tuple(parts.query_tokens.shape) == (1, 32, 32)  # 32 query tokens, as BLIP-2
    assert (parts.llama_proj.in_features, parts.llama_proj.out_features) == (32, 64)
    pixels = tiny.pixel_values([Image.open(p) for p in images])
    assert tuple(pixels.shape) == (4, 3, 32, 32)
    with torch.inference_mode():
        tokens = tiny.encode_images(pixels)
    assert tuple(tokens.shape) == (4, 32, 64)  # (n_images, n_query, llm_hidden)
    assert not torch.allclose(tokens[0], tokens[1])  # the image tokens depend on the image


def test_prompt_is_built_as_minigpt4s(tiny):
    first = tiny._render([tiny.params.prompt], [])
    assert first == MINIGPT4_FIRST_TURN
    second = tiny._render([tiny.params.prompt, "Continue"], ["A dog."])
    assert second == MINIGPT4_FIRST_TURN + "A dog.###Human: Continue ###Assistant: "

    before, after = tiny.prompt_token_ids(first)
    tok = tiny.parts.tokenizer
    # miniGPT-4's get_context_emb: split at the slot, BOS on the first segment only
    assert before[0] == tok.bos_token_id and tok.bos_token_id not in before[1:] + after
    assert tok.decode(before[1:]) == "###Human: <Img>"
    assert tok.decode(after) == ("</Img> Describe this image in detail. Give as many details as "
                                 "possible. Say everything you see. ###Assistant: ")
    assert before == tok("###Human: <Img>").input_ids
    assert after == tok("</Img> Describe this image in detail. Give as many details as possible. "
                        "Say everything you see. ###Assistant: ", add_special_tokens=False).input_ids


def test_image_embeddings_fill_the_slot_and_batches_are_left_padded(tiny, images):
    prompts = [tiny._render([tiny.params.prompt], []),
               tiny._render([tiny.params.prompt, "Continue"], ["a longer first answer here"])]
    with torch.inference_mode():
        image_tokens = tiny.encode_images(tiny.pixel_values([Image.open(p) for p in images[:2]]))
        inputs, mask = tiny.prompt_embeddings(prompts, image_tokens)
        embed = tiny.parts.llm.get_input_embeddings()
        for row, prompt in enumerate(prompts):
            before, after = tiny.prompt_token_ids(prompt)
            n = len(before) + 32 + len(after)
            pad = inputs.shape[1] - n
            assert mask[row, :pad].sum() == 0 and bool(mask[row, pad:].all())
            assert torch.count_nonzero(inputs[row, :pad]) == 0
            seq = inputs[row, pad:]
            torch.testing.assert_close(seq[:len(before)], embed(torch.tensor(before)))
            torch.testing.assert_close(seq[len(before):len(before) + 32], image_tokens[row])
            torch.testing.assert_close(seq[len(before) + 32:], embed(torch.tensor(after)))
    assert mask[0].sum() < mask[1].sum()  # the longer prompt set the width


def test_generation_is_batched_deterministic_and_image_dependent(tiny, images):
    batched = tiny.transcribe(images)
    one_by_one = _tiny(batch_size=1).transcribe(images)
    assert batched == one_by_one  # left padding does not change any image's conversation
    assert tiny.transcribe(images) == batched  # same seed, same text
    assert len({t.answers[0] for t in batched}) > 1  # the images, not just the prompt, matter
    other_seed = MiniGPT4Captioner(MiniGPT4Params(tiny_random=True, max_new_tokens=6), seed=5)
    assert other_seed.transcribe(images) != batched  # another random model


def test_sampling_is_reproducible_with_a_seed(images):
    sample = lambda seed: _tiny(do_sample=True, seed=seed, continue_min_tokens=0).caption(images)  # noqa: E731
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_continue_rule_adds_a_second_generation_turn(tiny, images, monkeypatch):
    calls = []
    generate = tiny.parts.llm.generate

    def spy(*args, **kwargs):  # records, then runs the real generate()
        calls.append(kwargs["inputs_embeds"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny.parts.llm, "generate", spy)
    transcripts = tiny.transcribe(images)
    assert calls == [4, 4]  # the first turn, then Continue for all four short answers
    for t in transcripts:
        assert len(t.prompts) == 2 and t.answer_tokens[0] < 80
        assert t.prompts[1] == t.prompts[0] + t.answers[0] + "###Human: Continue ###Assistant: "
        assert t.caption == " ".join(a for a in t.answers if a)
    assert tiny.caption(images) == [t.caption for t in transcripts]

    calls.clear()
    no_continue = _tiny(continue_min_tokens=0)
    no_continue.load()
    monkeypatch.setattr(no_continue.parts.llm, "generate",
                        lambda *a, **k: calls.append(k["inputs_embeds"].shape[0]) or
                        type(no_continue.parts.llm).generate(no_continue.parts.llm, *a, **k))
    single = no_continue.transcribe(images)
    assert calls == [4] and all(len(t.answers) == 1 for t in single)
    assert [t.answers[0] for t in single] == [t.answers[0] for t in transcripts]


def test_continue_only_for_answers_below_the_threshold(images):
    captioner = _tiny(max_new_tokens=4)
    captioner.load()
    first = captioner.transcribe(images)
    lengths = {t.answer_tokens[0] for t in first}
    assert len(lengths) > 1  # (re-tokenised gibberish varies in length)
    threshold = max(lengths)  # the longest answers reach it, the others fall below
    split = _tiny(max_new_tokens=4, continue_min_tokens=threshold).transcribe(images)
    for t in split:
        assert (len(t.answers) == 2) == (t.answer_tokens[0] < threshold)
    assert {len(t.answers) for t in split} == {1, 2}


def test_end_symbol_stops_generation_and_cuts_the_answer(images):
    free = _tiny(max_new_tokens=12, end_symbol="", continue_min_tokens=0).transcribe(images[:1])
    answer = free[0].answers[0]
    stop = answer[len(answer) // 2:len(answer) // 2 + 2]  # a string this model does produce
    assert stop.strip() and answer.index(stop) > 0
    stopped = _tiny(max_new_tokens=12, end_symbol=stop, continue_min_tokens=0).transcribe(images[:1])
    assert stopped[0].answers[0] == answer[:answer.index(stop)].strip()


def test_caption_returns_one_string_per_image(tiny, images):
    captions = tiny.caption(images[:3])
    assert isinstance(captions, list) and len(captions) == 3
    assert all(isinstance(c, str) for c in captions)
    assert tiny.caption([]) == []
    unloaded = _tiny()
    assert unloaded.caption([]) == [] and unloaded.parts is None  # nothing to do, nothing loaded


def test_half_precision_keeps_the_qformer_in_float32(images):
    captioner = _tiny(dtype="bfloat16", max_new_tokens=3, continue_min_tokens=0)
    captions = captioner.caption(images[:2])
    parts = captioner.parts
    assert next(parts.vision_model.parameters()).dtype == torch.bfloat16
    assert next(parts.llm.parameters()).dtype == torch.bfloat16
    assert next(parts.qformer.parameters()).dtype == torch.float32
    assert parts.query_tokens.dtype == parts.llama_proj.weight.dtype == torch.float32
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_identity_covers_models_prompt_generation_and_dtype():
    identity = _tiny().identity()
    assert identity["component"] == "minigpt4" and identity["dtype"] == "float32"
    assert identity["prompt"] == MINIGPT4_FIRST_TURN[len("###Human: "):-len(" ###Assistant: ")] and identity["continue_min_tokens"] == 80
    assert set(identity["generation"]) >= {"max_new_tokens", "num_beams", "do_sample",
                                            "temperature", "top_p", "repetition_penalty"}
    assert _tiny(dtype="bfloat16").identity()["dtype"] == "bfloat16"


# --------------------------------------------------------------------------------------
# minigpt4: loading the three weight sources from disk (tiny checkpoints written here)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny transformers BLIP-2 checkpoint, a tiny LLaMA folder and a miniGPT-4 .pth."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, LlamaConfig,
                              LlamaForCausalLM)

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    llama = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=4)
    blip2 = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8,
                           initializer_range=0.02),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=LlamaConfig(vocab_size=300, **llama).to_dict(), num_query_tokens=32))
    with torch.no_grad():
        blip2.query_tokens.normal_()  # BLIP-2 initialises them to zero: make the copy checkable
    blip2.save_pretrained(root / "blip2")

    tokenizer = train_tiny_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                                       pad_token_id=2, **llama))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")

    proj = {"llama_proj.weight": torch.randn(48, 32), "llama_proj.bias": torch.randn(48)}
    torch.save({"model": proj}, root / "minigpt4.pth")
    torch.save({"model": {"llama_proj.weight": torch.randn(64, 32),
                          "llama_proj.bias": torch.randn(64)}}, root / "wrong.pth")
    return root, blip2, llm, proj


def test_minigpt4_loads_blip2_front_end_llama_proj_and_llm(checkpoints, images):
    root, blip2, llm, proj = checkpoints
    captioner = MiniGPT4Captioner(MiniGPT4Params(
        blip2_model="blip2", llm="llm", minigpt4_checkpoint="minigpt4.pth", max_new_tokens=3),
        base_dir=root)
    captioner.load()
    parts = captioner.parts
    for name, tensor in blip2.vision_model.state_dict().items():
        torch.testing.assert_close(parts.vision_model.state_dict()[name], tensor)
    for name, tensor in blip2.qformer.state_dict().items():
        torch.testing.assert_close(parts.qformer.state_dict()[name], tensor)
    torch.testing.assert_close(parts.query_tokens, blip2.query_tokens.detach())
    torch.testing.assert_close(parts.llama_proj.weight.detach(), proj["llama_proj.weight"])
    torch.testing.assert_close(parts.llama_proj.bias.detach(), proj["llama_proj.bias"])
    for name, tensor in llm.state_dict().items():
        torch.testing.assert_close(parts.llm.state_dict()[name], tensor)
    assert parts.image_size == 32
    captions = captioner.caption(images[:2])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    identity = captioner.identity()
    assert identity["minigpt4_checkpoint"]["size"] == (root / "minigpt4.pth").stat().st_size
    assert {f[0] for f in identity["llm"]["files"]} >= {"config.json", "model.safetensors"}
    assert "blip2_model" in identity


def test_minigpt4_rejects_a_mismatched_llama_proj(checkpoints):
    root = checkpoints[0]
    captioner = MiniGPT4Captioner(MiniGPT4Params(
        blip2_model="blip2", llm="llm", minigpt4_checkpoint="wrong.pth"), base_dir=root)
    with pytest.raises(ValueError, match=r"llama_proj.weight has shape \(64, 32\).*expected \(48, 32\)"):
        captioner.load()


def test_minigpt4_reads_bin_and_sharded_blip2_checkpoints(checkpoints, tmp_path):
    from safetensors.torch import save_file

    root, blip2 = checkpoints[0], checkpoints[1]
    folder = tmp_path / "blip2"
    folder.mkdir()
    (folder / "config.json").write_text((root / "blip2" / "config.json").read_text())

    def load():
        captioner = MiniGPT4Captioner(MiniGPT4Params(
            blip2_model=str(folder), llm=str(root / "llm"),
            minigpt4_checkpoint=str(root / "minigpt4.pth")))
        captioner.load()
        return captioner.parts

    with pytest.raises(FileNotFoundError, match="no transformers checkpoint found; looked for "
                                                "model.safetensors.index.json"):
        load()
    state = {k: v.contiguous() for k, v in blip2.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    torch.testing.assert_close(load().query_tokens, blip2.query_tokens.detach())

    # Sharded: the language model's shard is listed but absent, so reading it would fail;
    # only the shard holding the vision encoder and Q-Former is opened.
    (folder / "pytorch_model.bin").unlink()
    front = {k: v for k, v in state.items() if not k.startswith("language")}
    save_file(front, folder / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in front}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in state if k not in front})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    parts = load()
    for name, tensor in blip2.qformer.state_dict().items():
        torch.testing.assert_close(parts.qformer.state_dict()[name], tensor)


# --------------------------------------------------------------------------------------
# backend transformers: a tiny LLaVA saved to disk, loaded through the Auto classes
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    folder = tmp_path_factory.mktemp("llava")
    base = train_tiny_tokenizer()
    base.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", pad_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                bos_token_id=1, eos_token_id=2, pad_token_id=2),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_transformers_backend_runs_the_same_conversation(tiny_llava, images, monkeypatch):
    captioner = TransformersCaptioner(MiniGPT4Params(backend="transformers", model=str(tiny_llava),
                                                     max_new_tokens=4, batch_size=3))
    captioner.load()
    assert captioner.image_token == "<image>"
    seen = []
    real = type(captioner.processor).__call__
    monkeypatch.setattr(type(captioner.processor), "__call__",
                        lambda self, *a, **k: seen.extend(k["text"]) or real(self, *a, **k))
    transcripts = captioner.transcribe(images)
    assert all(len(t.answers) == 2 for t in transcripts)  # short answers: Continue fired
    assert seen[0] == MINIGPT4_FIRST_TURN.replace(IMAGE_SLOT, "<image>")
    assert seen[-1].endswith("###Human: Continue ###Assistant: ")
    assert len(seen) == 8  # 4 images x 2 turns, in batches of 3
    one_by_one = TransformersCaptioner(MiniGPT4Params(
        backend="transformers", model=str(tiny_llava), max_new_tokens=4, batch_size=1))
    assert one_by_one.caption(images) == [t.caption for t in transcripts]
    assert captioner.identity()["model"]["path"] == str(tiny_llava.resolve())


# --------------------------------------------------------------------------------------
# dataset-captions
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from neuroenc_builtins.demo import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", subjects=(1,),
                                 n_train=30, n_test=10, image_size=32)


def test_nsd_ids_and_dataset_roots(tmp_path):
    assert nsd_id_from_name("train-0001_nsd-00013.png") == 13
    assert nsd_id_from_name("test-0159_nsd-72999.png") == 72999
    assert nsd_id_from_name("photo.png") is None
    image = tmp_path / "subj03" / "training_split" / "training_images" / "train-0001_nsd-00013.png"
    assert dataset_root_of(image) == tmp_path.resolve()
    with pytest.raises(ValueError, match="not in the Algonauts layout"):
        dataset_root_of(tmp_path / "img" / "x.png")


def test_dataset_captions_from_the_demo(demo_root):
    with open(demo_root / "demo_captions.csv", newline="") as fh:
        expected = {int(r["nsd_id"]): r["caption"] for r in csv.DictReader(fh)}
    captioner = DatasetCaptioner(DatasetCaptionsParams())
    for split, folder in (("training", "training_images"), ("test", "test_images")):
        paths = sorted((demo_root / "subj01" / f"{split}_split" / folder).glob("*.png"))
        assert paths
        assert captioner.caption(paths) == [expected[nsd_id_from_name(p)] for p in paths]
    assert captioner.identity()["source"] == "demo"


def test_dataset_captions_name_the_missing_image_and_file(demo_root, tmp_path):
    image = tmp_path / "subj01" / "training_split" / "training_images" / "train-0001_nsd-99999.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    captioner = DatasetCaptioner(DatasetCaptionsParams(source="demo"))
    with pytest.raises(FileNotFoundError, match="demo_captions.csv: no such file"):
        captioner.caption([image])
    (tmp_path / "demo_captions.csv").write_text("nsd_id,caption\n13,a cat\n")
    with pytest.raises(KeyError, match=r"nsd-99999.png: NSD id 99999 not in .*demo_captions.csv"):
        captioner.caption([image])


@pytest.fixture
def fake_nsd(tmp_path) -> tuple[Path, Path, list[Path]]:
    """A tiny NSD: stim info for NSD ids 0..3 and COCO captions split over train / val."""
    root = tmp_path / "nsd"
    folder = root / "subj01" / "training_split" / "training_images"
    folder.mkdir(parents=True)
    stim = root / "nsd_stim_info_merged.csv"
    # NSD's layout: an unnamed index column first, then cocoId, cocoSplit, ..., nsdId
    stim.write_text(",cocoId,cocoSplit,cropBox,nsdId\n"
                    "0,532481,val2017,\"(0, 0, 0.1, 0.1)\",0\n"
                    "1,245340,train2017,\"(0, 0, 0, 0)\",1\n"
                    "2,385029,train2017,\"(0, 0, 0, 0)\",2\n"
                    "3,777777,val2017,\"(0, 0, 0, 0)\",3\n")
    coco = tmp_path / "coco" / "annotations"
    coco.mkdir(parents=True)
    (coco / "captions_train2017.json").write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 245340, "id": 9, "caption": "A bus on a street. "},
        {"image_id": 245340, "id": 3, "caption": "A red double decker bus.\n"},
        {"image_id": 385029, "id": 5, "caption": "Two zebras grazing."}]}))
    (coco / "captions_val2017.json").write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 532481, "id": 7, "caption": "A kite in the sky."}]}))
    images = []
    for i, nsd_id in enumerate((1, 0, 2, 3)):
        path = folder / f"train-{i + 1:04d}_nsd-{nsd_id:05d}.png"
        path.write_bytes(b"")
        images.append(path)
    return stim, tmp_path / "coco", images


def test_dataset_captions_from_nsd_coco(fake_nsd):
    stim, coco, images = fake_nsd
    first = DatasetCaptioner(DatasetCaptionsParams(stim_info=str(stim), coco_annotations=[str(coco)]))
    assert first.source == "coco"
    assert first.caption(images[:3]) == ["A red double decker bus.", "A kite in the sky.",
                                         "Two zebras grazing."]
    every = DatasetCaptioner(DatasetCaptionsParams(
        stim_info=str(stim), which="all", separator=" | ",
        coco_annotations=[str(coco / "annotations" / "captions_train2017.json"),
                          str(coco / "annotations" / "captions_val2017.json")]))
    assert every.caption(images[:1]) == ["A red double decker bus. | A bus on a street."]
    assert every.identity() != first.identity()
    with pytest.raises(KeyError, match=r"COCO image 777777 \(val2017\), which has no caption in "
                                       r".*captions_val2017.json; is captions_val2017.json among"):
        first.caption(images[3:])


def test_dataset_captions_errors(fake_nsd, tmp_path):
    stim, coco, images = fake_nsd
    with pytest.raises(ValidationError, match="need stim_info"):
        DatasetCaptionsParams(source="coco", stim_info=str(stim))
    with pytest.raises(FileNotFoundError, match="stim_info: 'missing.csv': no such file"):
        DatasetCaptioner(DatasetCaptionsParams(stim_info="missing.csv",
                                               coco_annotations=[str(coco)]), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"coco_annotations\[0\]: .* holds neither"):
        DatasetCaptioner(DatasetCaptionsParams(stim_info=str(stim),
                                               coco_annotations=[str(tmp_path)]))
    bad = tmp_path / "stim.csv"
    bad.write_text("nsdId,coco\n0,1\n")
    captioner = DatasetCaptioner(DatasetCaptionsParams(stim_info=str(bad),
                                                       coco_annotations=[str(coco)]))
    with pytest.raises(ValueError, match="stim.csv: no column 'cocoId', 'cocoSplit'; found "
                                         "columns: nsdId, coco"):
        captioner.caption(images[:1])
    beyond = images[0].with_name("train-0009_nsd-00042.png")
    full = DatasetCaptioner(DatasetCaptionsParams(stim_info=str(stim), coco_annotations=[str(coco)]))
    with pytest.raises(KeyError, match=r"NSD id 42 has no row in .*nsd_stim_info_merged.csv"):
        full.caption([beyond])


# --------------------------------------------------------------------------------------
# caption-file
# --------------------------------------------------------------------------------------

def test_caption_file_csv_by_name_and_nsd_id(tmp_path):
    (tmp_path / "caps.csv").write_text(
        "image,caption,extra\n"
        "subj01/training_split/training_images/train-0001_nsd-00013.png,a cat on a mat,x\n"
        "42,\"a dog, running\",y\n")
    captioner = CaptionFileCaptioner(CaptionFileParams(path="caps.csv"), tmp_path)
    assert captioner.caption([Path("/any/train-0001_nsd-00013.png"),
                              Path("test-0002_nsd-00042.png")]) == ["a cat on a mat", "a dog, running"]
    renamed = tmp_path / "caps.tsv"
    renamed.write_text("file\ttext\n13\ta cat\n")
    tsv = CaptionFileCaptioner(CaptionFileParams(path=str(renamed), image_column="file",
                                                 caption_column="text"))
    assert tsv.caption([Path("train-0001_nsd-00013.png")]) == ["a cat"]
    assert tsv.identity()["sha256"] != captioner.identity()["sha256"]


def test_caption_file_jsonl(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"image": "img_a.png", "caption": "first"}) + "\n\n" +
                    json.dumps({"image": 7, "caption": "second"}) + "\n")
    captioner = CaptionFileCaptioner(CaptionFileParams(path=str(path)))
    assert captioner.caption([Path("img_a.png"), Path("train-0003_nsd-00007.png")]) == ["first", "second"]


def test_caption_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption-file path: 'none.csv': no such file"):
        CaptionFileCaptioner(CaptionFileParams(path="none.csv"), tmp_path)
    (tmp_path / "cols.csv").write_text("file,text\na.png,x\n")
    with pytest.raises(ValueError, match="cols.csv: no column 'image', 'caption'; found columns: "
                                         "file, text"):
        CaptionFileCaptioner(CaptionFileParams(path="cols.csv"), tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png"\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2: not valid JSON"):
        CaptionFileCaptioner(CaptionFileParams(path="bad.jsonl"), tmp_path)
    (tmp_path / "keys.jsonl").write_text('{"img": "a.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match=r"keys.jsonl: line 1: expected an object with keys "
                                         r"'image' and 'caption'; found \['caption', 'img'\]"):
        CaptionFileCaptioner(CaptionFileParams(path="keys.jsonl"), tmp_path)
    (tmp_path / "dup.csv").write_text("image,caption\na.png,x\nb.png,y\nsub/a.png,z\n")
    with pytest.raises(ValueError, match=r"dup.csv: row 4: image 'sub/a.png' already has a "
                                         r"different caption \(.*row 2\)"):
        CaptionFileCaptioner(CaptionFileParams(path="dup.csv"), tmp_path)
    (tmp_path / "caps.txt").write_text("")
    with pytest.raises(ValueError, match="cannot tell the format"):
        CaptionFileCaptioner(CaptionFileParams(path="caps.txt"), tmp_path)
    (tmp_path / "ok.csv").write_text("image,caption\na.png,x\n")
    captioner = CaptionFileCaptioner(CaptionFileParams(path="ok.csv"), tmp_path)
    with pytest.raises(KeyError, match=r"ok.csv: no caption for 2 of 3 images: b.png, "
                                       r"train-0001_nsd-00005.png \(NSD id 5\)"):
        captioner.caption([Path("a.png"), Path("b.png"), Path("train-0001_nsd-00005.png")])


def test_components_build_through_the_plugin_interface(tmp_path, pm):
    from neuroenc.core.context import RunContext

    (tmp_path / "caps.csv").write_text("image,caption\na.png,x\n")
    context = RunContext(manager=pm, cache_dir=tmp_path / "cache", base_dir=tmp_path, seed=11)
    by_name = {c.name: c for c in COMPONENTS}
    assert isinstance(by_name["caption-file"].build({"path": "caps.csv"}, context),
                      CaptionFileCaptioner)
    built = by_name["minigpt4"].build({"tiny_random": True}, context)
    assert isinstance(built, MiniGPT4Captioner) and built.seed == 11 and built.device == "cpu"
    assert isinstance(by_name["dataset-captions"].build({}, context), DatasetCaptioner)
