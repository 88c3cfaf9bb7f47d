import json
import os

import numpy as np
import pytest
from PIL import Image

from pneumodet.data import cache as cache_module
from pneumodet.data.cache import CacheParams, find_cache, fingerprint, open_cache, to_cache_size
from pneumodet.data.prepare import prepare
from pneumodet.errors import UserError


def test_resize_is_pils_bilinear_and_a_cache_sized_image_is_kept():
    pixels = np.random.default_rng(0).integers(0, 256, (300, 500), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BILINEAR))
    assert np.array_equal(to_cache_size(pixels, 64), expected)
    square = pixels[:64, :64]
    assert to_cache_size(square, 64) is square


def test_fingerprint_follows_names_sizes_times_and_label_contents(tmp_path):
    a, labels = tmp_path / "a.dcm", tmp_path / "labels.csv"
    a.write_bytes(b"x" * 10)
    labels.write_text("one")
    first = fingerprint([a], [labels])
    assert fingerprint([a], [labels]) == first
    labels.write_text("two")
    assert fingerprint([a], [labels]) != first
    labels.write_text("one")
    os.utime(a, ns=(1, 1))
    assert fingerprint([a], [labels]) != first


def test_find_cache_matches_parameters_and_sources(synth_data, tmp_path):
    out = tmp_path / "cache"
    result = prepare(synth_data, out, size_px=64, progress=False, workers=1)
    source = json.loads((result.cache_dir / "meta.json").read_text())["source"]
    params = CacheParams(size_px=64)
    assert find_cache(out, params, source) == out / "train-64px"
    assert find_cache(out, params, "another source") is None
    assert find_cache(out, CacheParams(size_px=96)) is None
    assert find_cache(out, CacheParams(size_px=64, resample="nearest")) is None
    with pytest.raises(UserError, match=r"no complete train cache at 96px \(found: train-64px\); run: pneumodet "
                                        r"prepare DATA --out .* --size 96"):
        open_cache(out, 96)


def test_a_cache_from_before_versioned_folders_is_refused_in_one_line(tmp_path):
    final = tmp_path / "train-64px"
    final.mkdir()  # an older pneumodet wrote the cache as a folder, not a link to a version
    (final / "stale").write_text("old")
    tmp = tmp_path / ".tmp-train-64px-0"
    tmp.mkdir()
    with pytest.raises(UserError, match="written by an older pneumodet.*remove it and run pneumodet prepare again"):
        cache_module.commit(tmp, final, {"params": {}})
    assert (final / "stale").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["train-64px"]


def test_commit_replaces_an_old_cache_atomically(tmp_path):
    final = tmp_path / "train-64px"
    versions = []
    for n in range(2):
        tmp = tmp_path / f".tmp-train-64px-{n}"
        tmp.mkdir()
        (tmp / "images.npy").write_bytes(b"new")
        cache_module.commit(tmp, final, {"params": {"n": n}})
        assert final.is_symlink() and json.loads((final / "meta.json").read_text()) == {"params": {"n": n}}
        assert not (final / "stale").exists()
        versions.append(final.resolve())
        # only the link and the version it points at: the previous version and temporary files are gone
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train-64px", versions[-1].name])
    assert versions[0] != versions[1]


def test_stale_build_folders_of_dead_runs_are_removed(synth_data, tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    dead = _dead_pid()
    for name in (f".tmp-train-64px-{dead}-1", f"train-64px@{dead}-2", f".old-train-64px-{dead}"):
        (out / name).mkdir()
        (out / name / "images.npy").write_bytes(b"x" * 100)
    alive = out / f".tmp-train-64px-{os.getpid()}-3"  # another prepare still running: left alone
    alive.mkdir()
    prepare(synth_data, out, size_px=64, progress=False, workers=1)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if str(dead) in n]
    assert alive.name in names and (out / "train-64px").is_symlink()
    # a later prepare that reuses the cache cleans up too
    (out / f".tmp-train-64px-{dead}-4").mkdir()
    assert prepare(synth_data, out, size_px=64, progress=False, workers=1).reused
    assert not (out / f".tmp-train-64px-{dead}-4").exists()


def _dead_pid() -> int:
    """Return the id of a process that has just exited."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
