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
