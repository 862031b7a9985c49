"""The caption cache: hits, misses, invalidation, crash and resume, identical images once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuroenc.stimuli.captions import (CaptionCacheWarning, caption_cache_dir, caption_cache_key,
                               caption_images, image_sha256, read_caption_cache)
from neuroenc.core.context import RunContext


from neuroenc_llmvem.captioners import (CaptionFileCaptioner, CaptionFileParams,
                                        MiniGPT4Captioner, MiniGPT4Params)


class Recording:
    """Wraps a real captioner and records every ``caption()`` call (a spy, not a stub)."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner = inner
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def caption(self, images):
        self.calls.append([Path(p).name for p in images])
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        return self.inner.caption(images)

    def identity(self):
        return self.inner.identity()

    @property
    def n_captioned(self) -> int:
        return sum(len(c) for c in self.calls)


def _write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"train-{i + 1:04d}_nsd-{i:05d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return _write_images(tmp_path / "img", 7)


@pytest.fixture
def caption_file(tmp_path, images) -> Path:
    path = tmp_path / "captions.csv"
    lines = ["image,caption"] + [f"{p.name},caption of image {i}" for i, p in enumerate(images)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def context(tmp_path, pm) -> RunContext:
    return RunContext(manager=pm, cache_dir=tmp_path / "cache", batch_size=3, show_progress=False,
                      base_dir=tmp_path)


def _file_captioner(caption_file: Path) -> Recording:
    return Recording(CaptionFileCaptioner(CaptionFileParams(path=str(caption_file))))


def _shards(captioner, context) -> list[Path]:
    return sorted(caption_cache_dir(captioner, context.cache_dir).glob("shard-*.jsonl"))


def test_miss_then_hit(images, caption_file, context):
    captioner = _file_captioner(caption_file)
    first = caption_images(captioner, images, context)
    assert first == [f"caption of image {i}" for i in range(7)]
    assert captioner.n_captioned == 7 and [len(c) for c in captioner.calls] == [3, 3, 1]

    again = _file_captioner(caption_file)
    assert caption_images(again, list(reversed(images)), context) == first[::-1]
    assert again.calls == []  # every caption came from the cache

    entry = caption_cache_dir(captioner, context.cache_dir)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["captioner"] == captioner.identity()
    assert read_caption_cache(entry) == {image_sha256(p): c for p, c in zip(images, first)}


def test_new_images_are_captioned_old_ones_reused(images, caption_file, context, tmp_path):
    captioner = _file_captioner(caption_file)
    caption_images(captioner, images[:4], context)
    captioner.calls.clear()
    assert caption_images(captioner, images, context)[4:] == [f"caption of image {i}" for i in (4, 5, 6)]
    assert sorted(sum(captioner.calls, [])) == sorted(p.name for p in images[4:])


def test_identical_images_are_captioned_once(images, caption_file, context, tmp_path):
    # the same bytes under other names (another subject's copy of a shared image)
    copies = []
    for i, src in enumerate(images[:3]):
        dst = tmp_path / "subj02" / src.name
        dst.parent.mkdir(exist_ok=True)
        dst.write_bytes(src.read_bytes())
        copies.append(dst)
    captioner = _file_captioner(caption_file)
    out = caption_images(captioner, images[:3] + copies + images[:3], context)
    assert captioner.n_captioned == 3
    assert out[:3] == out[3:6] == out[6:]


def test_a_changed_image_is_captioned_again(images, caption_file, context):
    captioner = _file_captioner(caption_file)
    caption_images(captioner, images, context)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(images[2])  # same name, new bytes
    captioner.calls.clear()
    caption_images(captioner, images, context)
    assert captioner.calls == [[images[2].name]]


def test_key_changes_with_prompt_and_every_generation_setting():
    base = dict(tiny_random=True, max_new_tokens=20)

    def key(**change):
        return caption_cache_key(MiniGPT4Captioner(MiniGPT4Params(**{**base, **change})))[0]

    reference = key()
    assert key() == reference  # stable; no model is loaded to compute it
    changes = dict(prompt="<Img><ImageHere></Img> What is in this picture?",
                   prompt_template="USER: {} ASSISTANT: ", continue_prompt="Go on",
                   continue_min_tokens=40, end_symbol="</s>", max_new_tokens=21, num_beams=2,
                   do_sample=True, temperature=0.7, top_p=0.5, top_k=10,
                   repetition_penalty=1.1, length_penalty=0.5, dtype="bfloat16", seed=1)
    keys = {name: key(**{name: value}) for name, value in changes.items()}
    unchanged = [name for name, k in keys.items() if k == reference]
    assert not unchanged, f"cache key ignores {unchanged}"
    assert len(set(keys.values())) == len(keys)
    # execution settings that do not change greedy captions keep the key
    assert key(batch_size=1) == reference


def test_prompt_change_invalidates_end_to_end(images, context):
    params = dict(tiny_random=True, max_new_tokens=3, continue_min_tokens=0)
    captioner = Recording(MiniGPT4Captioner(MiniGPT4Params(**params)))
    first = caption_images(captioner, images[:3], context)
    assert captioner.n_captioned == 3 and len(first) == 3

    hit = Recording(MiniGPT4Captioner(MiniGPT4Params(**params)))
    assert caption_images(hit, images[:3], context) == first and hit.calls == []

    changed = Recording(MiniGPT4Captioner(MiniGPT4Params(
        **params, prompt="<Img><ImageHere></Img> Say what you see.")))
    caption_images(changed, images[:3], context)
    assert changed.n_captioned == 3
    assert caption_cache_dir(changed, context.cache_dir) != caption_cache_dir(captioner, context.cache_dir)


def test_resume_after_an_exception_midway(images, caption_file, context):
    crashing = Recording(_file_captioner(caption_file).inner, fail_on_call=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        caption_images(crashing, images, context)
    [shard] = _shards(crashing, context)
    before = shard.read_bytes()
    assert before.count(b"\n") == 3  # the first batch is on disk

    resumed = _file_captioner(caption_file)
    out = caption_images(resumed, images, context)
    assert out == [f"caption of image {i}" for i in range(7)]
    assert sorted(sum(resumed.calls, [])) == sorted(p.name for p in images[3:])
    assert shard.read_bytes() == before  # a resumed run writes a shard of its own


def test_resume_after_a_hard_kill_and_a_torn_line(images, caption_file, context, tmp_path):
    # A real crash: the process dies inside caption() with no cleanup (os._exit). The child
    # serves the same captions under the same identity as the caption file, and imports
    # neuroenc only (not the plugin package) to start fast.
    inner = CaptionFileCaptioner(CaptionFileParams(path=str(caption_file)))
    script = textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from neuroenc.stimuli.captions import caption_images
        from neuroenc.core.context import RunContext
        from neuroenc.core.plugins import PluginManager

        identity = json.loads({json.dumps(json.dumps(inner.identity()))})
        by_name = json.loads({json.dumps(json.dumps(inner.by_name))})
        class Dying:
            calls = 0
            def identity(self):
                return identity
            def caption(self, images):
                Dying.calls += 1
                if Dying.calls == 3:
                    os._exit(17)
                return [by_name[Path(p).name] for p in images]
        context = RunContext(manager=PluginManager(load_entrypoints=False),
                             cache_dir=Path({str(context.cache_dir)!r}), batch_size=3,
                             show_progress=False)
        caption_images(Dying(), [Path(p) for p in {[str(p) for p in images]!r}], context)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 17, proc.stderr
    captioner = _file_captioner(caption_file)
    [shard] = _shards(captioner, context)
    lines = shard.read_bytes().split(b"\n")
    assert len(lines) == 7 and lines[-1] == b""  # two whole batches survived the kill

    # Tear the last line as an interrupted write would, then resume.
    torn = b"\n".join(lines[:5]) + b"\n" + lines[5][: len(lines[5]) // 2]
    shard.write_bytes(torn)
    out = caption_images(captioner, images, context)
    assert out == [f"caption of image {i}" for i in range(7)]
    # the torn image (the 6th) and the unfinished batch are captioned again, nothing else
    assert sorted(sum(captioner.calls, [])) == sorted(p.name for p in images[5:])
    assert shard.read_bytes() == torn  # earlier lines are never rewritten
    assert captioner.calls and caption_images(_file_captioner(caption_file), images, context) == out


def test_a_corrupt_middle_line_warns_and_is_recaptioned(images, caption_file, context):
    captioner = _file_captioner(caption_file)
    caption_images(captioner, images[:3], context)
    [shard] = _shards(captioner, context)
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join([lines[0], "not json", *lines[2:]]) + "\n")
    again = _file_captioner(caption_file)
    with pytest.warns(CaptionCacheWarning, match="line 2"):
        caption_images(again, images[:3], context)
    assert again.calls == [[images[1].name]]


class _BadCaptioner:
    def __init__(self, output):
        self.output = output

    def caption(self, images):
        return self.output(images)

    def identity(self):
        return {"component": "bad-test-captioner"}


@pytest.mark.parametrize("output, message", [
    (lambda imgs: "one string", "returned str; expected a list of 3 strings"),
    (lambda imgs: ["a"] * (len(imgs) - 1), "returned 2 captions for 3 images"),
    (lambda imgs: ["a", None, "c"], "is NoneType"),
])
def test_invalid_captioner_output_is_a_clear_error(images, context, output, message):
    with pytest.raises((TypeError, ValueError), match=message) as info:
        caption_images(_BadCaptioner(output), images[:3], context)
    assert "'bad-test-captioner'" in str(info.value)


def test_no_images_captions_nothing(caption_file, context):
    captioner = _file_captioner(caption_file)
    assert caption_images(captioner, [], context) == [] and captioner.calls == []


def test_progress_counts_only_images_to_caption(images, caption_file, tmp_path, pm):
    events = []

    class RecordingContext(RunContext):
        def progress(self, description, total):
            events.append((description, total))
            return super().progress(description, total)

    context = RecordingContext(manager=pm, cache_dir=tmp_path / "c", batch_size=4,
                               show_progress=False)
    captioner = _file_captioner(caption_file)
    caption_images(captioner, images[:2], context, description="demo captions")
    caption_images(captioner, images, context, description="demo captions")
    caption_images(captioner, images, context)
    assert [total for _, total in events] == [2, 5]
    assert events[0][0].startswith("demo captions")


def test_cache_lines_are_complete_json_records(images, caption_file, context):
    captioner = _file_captioner(caption_file)
    caption_images(captioner, images, context)
    records = [json.loads(line) for shard in _shards(captioner, context)
               for line in shard.read_text().splitlines()]
    assert {r["image"] for r in records} == {p.name for p in images}
    assert all(len(r["sha256"]) == 64 for r in records)
    assert os.path.basename(str(_shards(captioner, context)[0])).startswith("shard-")
