"""A full disk, met by each command that writes: one line naming the path and the space left, exit 2, and
nothing presented as complete that is not. Each test mounts a small tmpfs (root only; skipped elsewhere)."""

from __future__ import annotations

import pytest

from pneumodet.cli import main
from pneumodet.config_files import dump_config
from pneumodet.io.layout import TEST_IMAGES
from tests.conftest import tiny_config
from tests.security.mounts import fill, tmpfs


def _last_error_line(capsys, code: int) -> str:
    """The error line a failed command ends with (progress bars may come before it), checked for a traceback."""
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pneumodet ") and ": error: " in last
    return last


def test_predict_on_a_full_disk_publishes_neither_file(trained_run, synth_data, tmp_path, capsys):
    with tmpfs(tmp_path / "out", size="1m") as out:
        fill(out)
        submission = out / "submission.csv"
        last = _last_error_line(capsys, main(["predict", str(trained_run), str(synth_data / TEST_IMAGES), "--out",
                                              str(submission), "--workers", "0"]))
        assert "No space left on device" in last and "KB free there" in last and "submission" in last
        assert sorted(p.name for p in out.iterdir()) == [".filler"]  # no submission, no boxes, no temporary file


@pytest.mark.parametrize("workers", ["1", "2"])
def test_prepare_on_a_full_disk_says_so_and_publishes_no_cache(synth_data, tmp_path, workers):
    import subprocess
    import sys

    with tmpfs(tmp_path / "cache", size="1m") as out:  # 30 images at 256 px need 1.9 MB
        # in its own process: a full disk under a memory map used to be a SIGBUS, which would end this one too
        done = subprocess.run([sys.executable, "-m", "pneumodet.cli", "prepare", str(synth_data), "--out", str(out),
                               "--size", "256", "--workers", workers], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("pneumodet prepare: error: ") and "images.npy: cannot write here (No space left" in last
        assert not (out / "train-256px").exists() and not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_train_on_a_full_disk_says_so_and_resumes_once_there_is_room(tiny_cache, tmp_path, capsys):
    import subprocess

    config = tmp_path / "tiny.yaml"
    dump_config(tiny_config(), config)
    with tmpfs(tmp_path / "runs", size="4m") as runs:  # room for the plots, not for a 20 MB checkpoint
        run = runs / "tiny"
        last = _last_error_line(capsys, main(["train", "--config", str(config), "--data", str(tiny_cache),
                                              "--run", str(run)]))
        assert ".ckpt: cannot write here (No space left on device" in last and "free there" in last
        assert not (run / "weights" / "last.ckpt").exists() and not list((run / "weights").glob(".*tmp*"))
        subprocess.run(["mount", "-o", "remount,size=256m", str(runs)], check=True)
        assert main(["train", "--resume", "--run", str(run), "--data", str(tiny_cache)]) == 0
        assert (run / "weights" / "last.ckpt").is_file()


def test_distil_on_a_full_disk_says_so_and_leaves_no_cache(trained_run, tiny_cache, synth_data, tmp_path):
    import subprocess
    import sys

    with tmpfs(tmp_path / "student", size="1m") as out:
        fill(out)  # the teacher calls every test image negative below 1.0: each is added, and its pixels need room
        done = subprocess.run([sys.executable, "-m", "pneumodet.cli", "distil", str(trained_run),
                               str(synth_data / TEST_IMAGES), "--data", str(tiny_cache), "--out", str(out),
                               "--negative-below", "1", "--workers", "0"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("pneumodet distil: error: ") and "cannot write here (No space left" in last
        assert sorted(p.name for p in out.iterdir()) == [".filler"]  # no cache, no split, no temporary folder
