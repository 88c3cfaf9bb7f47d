import pytest

from pneumodet.files import atomic_path, write_text_atomic


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.csv"]  # no temporary file left
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not tmp.name.endswith(".csv") and tmp.name.startswith(".")
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_atomic_path_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from pathlib import Path

    from pneumodet import files

    events = []
    monkeypatch.setattr(files, "fsync_path", lambda p: events.append(("fsync", Path(p).name)))
    real_replace = Path.replace
    monkeypatch.setattr(Path, "replace", lambda self, target: (events.append(("rename", Path(target).name)),
                                                                real_replace(self, target))[1])
    files.write_text_atomic(tmp_path / "metrics.json", "{}")
    assert events == [("fsync", f".metrics.json.tmp-{__import__('os').getpid()}"), ("rename", "metrics.json"),
                      ("fsync", tmp_path.name)]


def test_a_cache_is_synced_before_it_is_declared_complete(synth_data, tmp_path, monkeypatch):
    from pathlib import Path

    from pneumodet.data import cache
    from pneumodet.data.prepare import prepare

    synced = []
    real = cache.fsync_path
    monkeypatch.setattr(cache, "fsync_path", lambda p: (synced.append(Path(p).name), real(p)))
    prepare(synth_data, tmp_path / "c", size_px=64, progress=False, workers=1)
    data_files = {"images.npy", "images.csv", "boxes.csv", "problems.csv"}
    assert data_files <= set(synced[: synced.index(".meta.json.tmp")])  # all data on disk before the marker
    assert synced.count("c") >= 2  # the folder, after the version rename and after the link swap
