"""Every image is checked when a subject is read, and all bad files are reported at once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from algonauts_fixture import write_tiny_algonauts
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc_builtins.algonauts import DatasetError
from neuroenc.stimuli.images import check_images, require_valid_images

runner = CliRunner()
TRAIN = "subj01/training_split/training_images"
TEST = "subj01/test_split/test_images"


def _break(root: Path) -> dict[str, str]:
    """Damage three training images and one test image; return {relative path: reason start}."""
    train = sorted((root / TRAIN).iterdir())
    test = sorted((root / TEST).iterdir())
    train[0].write_bytes(b"")
    data = train[1].read_bytes()
    train[1].write_bytes(data[: len(data) // 2])
    data = bytearray(train[2].read_bytes())
    data[60] ^= 0xFF  # inside the first chunk after the header: its CRC no longer matches
    train[2].write_bytes(bytes(data))
    test[0].write_bytes(b"not an image at all")
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return {rel(train[0]): "empty file (0 bytes)", rel(train[1]): "truncated or unreadable",
            rel(train[2]): "corrupt", rel(test[0]): "not an image Pillow can read"}


def test_check_images_names_every_bad_file(tmp_path):
    write_tiny_algonauts(tmp_path, n_train=6, n_test=3, n_vertices=(40, 50))
    broken = _break(tmp_path)
    paths = sorted((tmp_path / TRAIN).iterdir()) + sorted((tmp_path / TEST).iterdir())
    bad = {p.relative_to(tmp_path).as_posix(): reason for p, reason in check_images(paths)}
    assert sorted(bad) == sorted(broken)
    for path, start in broken.items():
        assert bad[path].startswith(start), (path, bad[path])


def test_good_files_are_memoised_and_a_changed_file_is_checked_again(tmp_path):
    write_tiny_algonauts(tmp_path, n_train=4, n_test=2, n_vertices=(40, 50))
    paths = sorted((tmp_path / TRAIN).iterdir())
    for p in paths:  # settled files (older than the 2 s racy window) are memoised
        os.utime(p, ns=(p.stat().st_mtime_ns - 10**10, p.stat().st_mtime_ns - 10**10))
    memo = tmp_path / "memo"
    assert check_images(paths, memo) == []
    assert len(list(memo.iterdir())) == 1
    paths[0].write_bytes(b"")  # same name, new content: stat changed, so it is checked again
    assert check_images(paths, memo) == [(paths[0], "empty file (0 bytes)")]


def test_require_valid_images_raises_one_error_listing_all(tmp_path):
    write_tiny_algonauts(tmp_path, n_train=6, n_test=3, n_vertices=(40, 50))
    broken = _break(tmp_path)
    paths = sorted((tmp_path / TRAIN).iterdir()) + sorted((tmp_path / TEST).iterdir())
    with pytest.raises(DatasetError) as info:
        require_valid_images(paths, root=tmp_path, what="subj01 images")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("4 of 9 subj01 images cannot be read")
    assert [line.split(":")[0].strip() for line in lines[1:]] == sorted(broken)


REGISTRY = """
name: images
dataset: {{kind: algonauts2023, root: {root}, subjects: [1]}}
models:
  ridge:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32}}
    mapper: {{name: ridge, n_folds: 2}}
compute: {{cache_dir: cache}}
output: {{dir: out}}
"""


def test_run_and_validate_check_data_report_bad_images_before_extraction(tmp_path):
    root = tmp_path / "data"
    write_tiny_algonauts(root, n_train=12, n_test=4, n_vertices=(40, 50))
    broken = _break(root)
    registry = tmp_path / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=root)))
    for args in (["run", str(registry), "--no-progress"], ["validate", str(registry), "--check-data"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert "4 of 16 subj01 images cannot be read" in result.output
        for path in broken:
            assert path in result.output
    assert not (tmp_path / "cache" / "features").exists()  # nothing was extracted
    ok = runner.invoke(app, ["validate", str(registry)])
    assert ok.exit_code == 0 and "(data checked)" not in ok.output


def test_validate_check_data_passes_a_good_copy(tmp_path):
    root = tmp_path / "data"
    write_tiny_algonauts(root, n_train=5, n_test=2, n_vertices=(40, 50))
    registry = tmp_path / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=root)))
    result = runner.invoke(app, ["validate", str(registry), "--check-data"])
    assert result.exit_code == 0, result.output
    assert "subj01: 5 training and 2 test images readable" in result.output
    assert "(data checked)" in result.output
