import math
import subprocess
import sys

import pytest
import torch

from pneumodet.checkpoints import atomic_save, chosen_checkpoint, read_checkpoint
from pneumodet.errors import UserError
from pneumodet.runs import (
    METRIC_COLUMNS,
    RunPaths,
    find_run,
    new_run_dir,
    read_metrics,
    run_split,
    write_env,
    write_metrics,
)


def test_run_folders_are_never_reused(tmp_path):
    assert new_run_dir(tmp_path, "demo") == tmp_path / "demo"
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo-2").mkdir()
    assert new_run_dir(tmp_path, "demo") == tmp_path / "demo-3"


def test_checkpoints_are_plain_and_checked(tmp_path):
    path = tmp_path / "w.ckpt"
    atomic_save({"state_dict": {"a": torch.ones(2)}, "pneumodet": {"epoch": 1}}, path)
    assert read_checkpoint(path)["pneumodet"] == {"epoch": 1}
    torch.save({"something": 1}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="not a pneumodet checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(UserError, match="no weights/best.ckpt"):
        find_run(tmp_path)
    with pytest.raises(UserError, match="run folder not found"):
        find_run(tmp_path / "nope")


def test_the_config_chooses_last_or_best(tmp_path):
    paths = RunPaths(tmp_path)
    paths.weights.mkdir()

    def save(path, epoch, train):
        atomic_save({"state_dict": {}, "pneumodet": {"epoch": epoch, "config": {"train": train}}}, path)

    for wanted, chosen in (("last", paths.last), ("best", paths.best)):
        save(paths.best, 7, {"checkpoint": wanted})
        save(paths.last, 9, {"checkpoint": wanted})
        assert chosen_checkpoint(paths)["path"] == chosen
    paths.best.unlink()  # stopped before a best was saved: the one there is
    assert chosen_checkpoint(paths)["path"] == paths.last


def test_metrics_round_trip_with_empty_cells(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.5, "val_rsna_map": float("nan"), "lr": 0.01}, {"epoch": 2, "lr": 0.001}]
    write_metrics(tmp_path / "metrics.csv", rows)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",") == METRIC_COLUMNS
    back = read_metrics(tmp_path / "metrics.csv")
    assert back[0]["train_loss"] == 1.5 and math.isnan(back[0]["val_rsna_map"]) and back[1]["lr"] == 0.001


def test_env_names_versions_without_importing_lightning(tmp_path):
    code = ("import sys; from pathlib import Path; from pneumodet.runs import write_env; "
            f"write_env(Path({str(tmp_path / 'env.txt')!r})); print('lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
    text = (tmp_path / "env.txt").read_text()
    assert "lightning 2." in text and "torch " in text and "git commit " in text
    write_env(tmp_path / "again.txt")
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_run_without_its_split_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not record the split it trained on"):
        run_split(RunPaths(tmp_path))


def test_a_checkpoint_an_older_pneumodet_wrote_is_refused_in_one_line(trained_run, tmp_path):
    """No compatibility branches for the project's own older files: a run whose checkpoint holds a setting this
    pneumodet does not read, or lacks one it needs, is refused, naming the version that wrote it."""
    import shutil

    from pneumodet.checkpoints import load_trained
    from pneumodet.detector import load_detector

    for change, says in ((lambda c: c["model"].update(box_nms=0.01), "model.box_nms is now predict.nms_iou"),
                         (lambda c: c["train"].pop("checkpoint"), "train.checkpoint missing")):
        run = tmp_path / f"old-{len(says)}"
        shutil.copytree(trained_run, run)
        for name in ("best.ckpt", "last.ckpt"):
            path = run / "weights" / name
            if path.is_file():
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                checkpoint["pneumodet"]["version"] = "0.0.9"
                change(checkpoint["pneumodet"]["config"])
                atomic_save(checkpoint, path)
        for load in (load_trained, load_detector):
            with pytest.raises(UserError, match=f"written by pneumodet 0.0.9, which this pneumodet .* cannot read "
                                                f"\\({says}.*train the run again"):
                load(run)
