"""A run folder someone else wrote, or a kill left half-written: damaged weights and engine files are refused,
predictions are re-scored only under the settings they were made with, and every dead end of ``train`` is one
line, exit 2, with the file system left as it was."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from pneumodet.cli import main
from pneumodet.config_files import dump_config
from pneumodet.io.layout import TEST_IMAGES
from tests.conftest import tiny_config


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (missing: empty), by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


def _one_error_line(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expected and err.count("\n") == 1 and "Traceback" not in err, err[-1500:]
    return err


def flip_one_float_per_tensor(checkpoint: Path) -> int:
    """Change 4 bytes in every tensor stored in a torch zip checkpoint, leaving the zip's CRCs as they were (the
    damage a bad disk or copy does); return how many tensors were hit."""
    with zipfile.ZipFile(checkpoint) as archive:
        members = [m for m in archive.infolist() if "/data/" in m.filename and m.file_size >= 4]
    data = bytearray(checkpoint.read_bytes())
    for member in members:
        name_length, extra_length = int.from_bytes(data[member.header_offset + 26:member.header_offset + 28], "little"), \
            int.from_bytes(data[member.header_offset + 28:member.header_offset + 30], "little")
        start = member.header_offset + 30 + name_length + extra_length
        data[start:start + 4] = bytes(b ^ 0x40 for b in data[start:start + 4])
    checkpoint.write_bytes(bytes(data))
    return len(members)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def test_a_damaged_checkpoint_is_refused_by_every_command(run_copy, synth_data, tmp_path, capsys):
    from pneumodet.service.app import create_app

    assert flip_one_float_per_tensor(run_copy / "weights" / "last.ckpt") > 10
    out = tmp_path / "sub.csv"
    err = _one_error_line(capsys, main(["predict", str(run_copy), str(synth_data / TEST_IMAGES), "--out", str(out),
                                        "--workers", "0"]))
    assert "last.ckpt: damaged" in err and "does not match its checksum" in err and not out.exists()
    err = _one_error_line(capsys, main(["evaluate", str(run_copy)]))
    assert "last.ckpt: damaged" in err
    with pytest.raises(Exception, match="last.ckpt: damaged"):
        create_app(run_copy)


def test_a_damaged_or_unlisted_engine_graph_is_not_run(trained_run, tmp_path, synth_data, capsys):
    from pneumodet.checkpoints import load_trained
    from pneumodet.detector import load_detector
    from pneumodet.onnx_export import export_onnx
    from pneumodet.onnx_runtime import META_FILE

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    model, config, info = load_trained(run)
    export_onnx(model, config.data.image_size, info["path"], run / "engine")
    meta = json.loads((run / "engine" / META_FILE).read_text())
    assert set(meta["sha256"]) == {"dense.onnx", "heads.onnx"}
    assert load_detector(run).backend == "onnx"
    graph = run / "engine" / "dense.onnx"
    blob = bytearray(graph.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    graph.write_bytes(bytes(blob))
    err = _one_error_line(capsys, main(["predict", str(run), str(synth_data / TEST_IMAGES), "--out",
                                        str(tmp_path / "s.csv"), "--workers", "0"]))
    assert "dense.onnx: does not match the SHA-256 in engine.json" in err and "pneumodet export" in err
    del meta["sha256"]  # an export that vouches for nothing: not used
    (run / "engine" / META_FILE).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="or by another pneumodet"):
        assert load_detector(run).backend == "torch"


def test_reuse_refuses_predictions_made_under_other_settings(run_copy, monkeypatch, capsys):
    import pneumodet.evaluate as ev
    import pneumodet.saved as saved

    with pytest.warns(UserWarning, match="trained without flips"):
        made = ev.evaluate(run_copy, progress=False, hflip_tta=True)
    assert made["predictions"]["settings"]["hflip_tta"] is True and "val.csv" in made["predictions"]["sha256"]
    # evaluate --no-tta killed once val.csv is written, before the record of how it was made
    real = saved.write_text_atomic

    def killed(path, text):
        if Path(path).name == "val.json":
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(saved, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(run_copy, progress=False, hflip_tta=False)
    monkeypatch.setattr(saved, "write_text_atomic", real)
    before = _snapshot(run_copy)
    err = _one_error_line(capsys, main(["evaluate", str(run_copy), "--reuse"]))
    assert "no record of how these predictions were made" in err and _snapshot(run_copy) == before
    # made whole again without TTA: --reuse scores them as made, and refuses to call them TTA predictions
    ev.evaluate(run_copy, progress=False, hflip_tta=False)
    again = ev.evaluate(run_copy, progress=False, reuse_predictions=True)
    assert again["hflip_tta"] is False and json.loads((run_copy / "metrics.json").read_text())["hflip_tta"] is False
    before = _snapshot(run_copy)
    err = _one_error_line(capsys, main(["evaluate", str(run_copy), "--reuse", "--tta"]))
    assert "made with hflip_tta False (asked: True)" in err and _snapshot(run_copy) == before
    (run_copy / "predictions" / "val.csv").write_text((run_copy / "predictions" / "val.csv").read_text() + "x,1,1,1,1,1\n")
    err = _one_error_line(capsys, main(["evaluate", str(run_copy), "--reuse"]))
    assert "val.csv: not the file its record describes" in err


def test_a_partial_postprocess_is_one_line_and_evaluate_repairs_it(run_copy, synth_data, tmp_path, capsys):
    from pneumodet.service.app import create_app

    metrics = json.loads((run_copy / "metrics.json").read_text())
    del metrics["postprocess"]["nms_iou"]
    (run_copy / "metrics.json").write_text(json.dumps(metrics))
    err = _one_error_line(capsys, main(["predict", str(run_copy), str(synth_data / TEST_IMAGES), "--out",
                                        str(tmp_path / "s.csv"), "--workers", "0"]))
    assert "metrics.json: postprocess lacks nms_iou" in err and "pneumodet evaluate" in err
    with pytest.raises(Exception, match="postprocess lacks nms_iou"):
        create_app(run_copy)
    metrics["postprocess"]["nms_iou"] = "wide"
    (run_copy / "metrics.json").write_text(json.dumps(metrics))
    err = _one_error_line(capsys, main(["predict", str(run_copy), str(synth_data / TEST_IMAGES), "--out",
                                        str(tmp_path / "s.csv"), "--workers", "0"]))
    assert "predict.nms_iou: expected float, got 'wide'" in err
    assert main(["evaluate", str(run_copy)]) == 0
    assert set(json.loads((run_copy / "metrics.json").read_text())["postprocess"]) >= {"nms_iou", "score_threshold"}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    dump_config(tiny_config(), path)
    return path


@pytest.mark.parametrize("override, says", [
    ("train.accelerator='gpu'", "train.accelerator=gpu"),
    ("train.accelerator='tpu9'", "train.accelerator must be one of auto, cpu, gpu, cuda, mps"),
    ("train.strategy='nonsense'", "strategy=nonsense"),
    ("train.seed=-1", "train.seed must be in [0, 4.29497e+09], got -1"),
    ("model.weights='/no/such/file.pth'", "model.weights must be coco, imagenet, synth, none or an existing weights file"),
    ("model.weights='/etc/passwd'", "model.weights=/etc/passwd: not a weights file torch can read"),
    ("name=''", "name must be a plain folder name"),
    ("name='../outside'", "name must be a plain folder name"),
])
def test_a_bad_setting_is_one_line_and_creates_nothing(tiny_cache, config_file, tmp_path, capsys, override, says):
    runs = tmp_path / "runs"
    err = _one_error_line(capsys, main(["train", "--config", str(config_file), "--data", str(tiny_cache),
                                        "--runs", str(runs), "--set", override]))
    assert says in err and not runs.exists() and not (tmp_path / "outside").exists()


def test_resume_of_a_finished_run_changes_nothing(run_copy, tiny_cache, capsys):
    before = _snapshot(run_copy)
    err = _one_error_line(capsys, main(["train", "--resume", "--run", str(run_copy), "--data", str(tiny_cache)]))
    assert "finished all 2 epochs" in err and "nothing to resume" in err and _snapshot(run_copy) == before


@pytest.mark.parametrize("damage", ["truncated", "binary"])
def test_a_damaged_config_yaml_is_an_error_not_defaults(run_copy, tiny_cache, capsys, damage):
    config = run_copy / "config.yaml"
    text = config.read_text()
    lines = text.splitlines(keepends=True)  # cut after a whole line: valid YAML that lacks settings
    config.write_bytes("".join(lines[: len(lines) // 2]).encode() if damage == "truncated" else bytes(range(256)) * 4)
    shutil.rmtree(run_copy / "weights")  # resumable: killed before its first checkpoint
    before = _snapshot(run_copy)
    err = _one_error_line(capsys, main(["train", "--resume", "--run", str(run_copy), "--data", str(tiny_cache)]))
    assert ("setting(s) missing" if damage == "truncated" else "not a text file") in err
    assert _snapshot(run_copy) == before


def test_a_run_killed_before_its_first_checkpoint_resumes_from_its_start(run_copy, tiny_cache, capsys):
    shutil.rmtree(run_copy / "weights")
    (run_copy / "weights").mkdir()
    stale = run_copy / "weights" / f".last.ckpt.tmp-{2**22 + 12345}"  # a process id that is not running
    stale.write_bytes(b"half a checkpoint")
    split = (run_copy / "split.csv").read_bytes()
    assert main(["train", "--resume", "--run", str(run_copy), "--data", str(tiny_cache)]) == 0
    assert (run_copy / "weights" / "last.ckpt").is_file() and not stale.exists()
    assert (run_copy / "split.csv").read_bytes() == split  # the same split, whatever the cache says now
    rows = (run_copy / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert not (run_copy / "metrics.json").exists()  # the old evaluation was of weights that are gone


def test_an_empty_folder_is_nothing_to_resume(tmp_path, tiny_cache, capsys):
    err = _one_error_line(capsys, main(["train", "--resume", "--run", str(tmp_path / "nothing"), "--data",
                                        str(tiny_cache)]))
    assert "nothing to resume: not a run folder" in err and not (tmp_path / "nothing").exists()


def test_score_strips_spaces_around_ids(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\na,10,10,20,20,1\nb,,,,,0\n")
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\n a ,0.9 10 10 20 20\nb ,\n")
    assert main(["score", str(tmp_path / "sub.csv"), "--labels", str(tmp_path / "labels.csv")]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["rsna_map"] == 1.0 and scored["missing_from_submission"] == 0

