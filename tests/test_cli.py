import subprocess
import sys

import pytest

from pneumodet.cli import build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    for command in ("synth", "download", "prepare", "demo"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, "--help"])
        assert info.value.code == 0
        assert "usage: pneumodet" in capsys.readouterr().out


def test_train_help_names_the_memory_switch(capsys):
    """The one environment setting that changes training must be findable from ``train --help``."""
    from pneumodet import memory
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert f"{memory.ENV}=0" in " ".join(capsys.readouterr().out.split())


def test_evaluate_takes_tta_sizes_in_range(capsys):
    parser = build_parser()
    assert parser.parse_args(["evaluate", "run", "--tta-scales", "1", "1.25"]).tta_scales == [1.0, 1.25]
    assert parser.parse_args(["evaluate", "run"]).tta_scales is None  # the config's
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["evaluate", "run", "--tta-scales", "1", "9"])
    assert info.value.code == 2 and "expected a number in [0.25, 4], got 9" in capsys.readouterr().err
    assert parser.parse_args(["evaluate", "run", "--box-refine", "1"]).box_refine == 1
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["evaluate", "run", "--box-refine", "9"])
    assert info.value.code == 2 and "expected a number in [0, 8], got 9" in capsys.readouterr().err
    assert [parser.parse_args(["evaluate", "run", *flag]).box_vote for flag in ([], ["--box-vote"], ["--no-box-vote"])] \
        == [None, True, False]  # None: the config's


def test_synth_then_prepare(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--train", "12", "--test", "2", "--seed", "1", "--workers", "1"]) == 0
    assert "wrote 12 train" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "c"), "--size", "64",
                 "--val-fraction", "0.25", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "12/12 images usable" in out and "cache built" in out
    assert main(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "c"), "--size", "64"]) == 0
    assert "cache reused" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "prepare", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "data folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_reader_that_goes_away_is_no_traceback(tmp_path):
    """`pneumodet score ... | head`: the pipe closes before the JSON is written; exit 0, nothing on stderr."""
    labels, submission = tmp_path / "labels.csv", tmp_path / "sub.csv"
    labels.write_text("patientId,x,y,width,height,Target\na,10,10,50,50,1\nb,,,,,0\n")
    submission.write_text("patientId,PredictionString\na,0.9 10 10 50 50\nb,\n")
    proc = subprocess.Popen([sys.executable, "-m", "pneumodet.cli", "score", str(submission), "--labels",
                             str(labels)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the child has imported pandas and scored
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_bad_option_value_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["synth", "x", "--train", "many"])
    assert info.value.code == 2
    assert "expected a whole number" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_in_miniature(tmp_path):
    """The whole pipeline behind make demo, shrunk: every result it promises is written."""
    import json

    out = tmp_path / "demo"
    # 8 test images, 2 of them positive: where no test image counts (no truth and no predicted box) the score has
    # no interval, and the line is not the one make demo prints
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "demo", "--out", str(out), "--train", "40",
                           "--test", "8", "--set", "train.steps=4", "--set", "train.epochs=1",
                           "--set", "train.stages=[{'until_epoch': 1}]",
                           "--set", "data.num_workers=0"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert {"val_rsna_map_untrained", "val_rsna_map_trained", "test_rsna_map", "wall_time_s"} <= set(summary)
    run = out / "runs" / "demo"
    for name in ("metrics.csv", "metrics.json", "weights/best.ckpt", "plots/loss_curves.png", "plots/roc.png",
                 "plots/threshold.png", "plots/augmentations.png"):
        assert (run / name).is_file(), name
    assert (out / "submission.csv").read_text().startswith("patientId,PredictionString")
    assert "val RSNA mAP (tuned on val): untrained" in proc.stdout and str(out / "submission.csv") in proc.stdout
    from tests.test_readme import FIRST_LINE

    written = (out / "demo_output.txt").read_text()  # what make readme copies into README: what was printed,
    assert proc.stdout.rstrip().endswith(written.rstrip()) and FIRST_LINE.match(written.splitlines()[0])  # its format


def test_a_diverged_run_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from pneumodet.training import train as train_module
    from pneumodet.training.module import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("5 non-finite losses in a row at epoch 3: training diverged")

    monkeypatch.setattr(train_module, "train", diverge)
    from pneumodet.demo import DEMO_CONFIG

    assert main(["train", "--config", str(DEMO_CONFIG), "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "pneumodet train: error: 5 non-finite losses in a row at epoch 3: training diverged"


@pytest.mark.parametrize("option, message", [
    (["--shrink", "0"], "--shrink: expected a number in (0, 1.5], got 0"),
    (["--nms", "1.2"], "--nms: expected a number in [0, 1], got 1.2"),
    (["--threshold", "high"], "--threshold: expected a number, got 'high'"),
    (["--max-boxes", "-1"], "--max-boxes: expected a number >= 0, got -1"),
])
def test_predict_post_processing_overrides_are_checked(option, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "run", "images", "--out", "sub.csv", *option])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("where", ["a file", "under /proc", "read-only"])
def test_unwritable_outputs_are_one_line_and_exit_2(where, synth_data, trained_run, tmp_path, capsys):
    from pneumodet.io.layout import TEST_IMAGES

    if where == "a file":
        target = tmp_path / "taken"
        target.write_text("x")
    elif where == "under /proc":
        target = "/proc/pneumodet-out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "sub"
        if __import__("os").geteuid() == 0:  # root writes anywhere: a read-only file system is the same case
            target = "/proc/sys/pneumodet"
    commands = [
        ["synth", str(target), "--train", "2", "--test", "0", "--workers", "1"],
        ["prepare", str(synth_data), "--out", str(target), "--size", "64", "--workers", "1"],
        ["predict", str(trained_run), str(synth_data / TEST_IMAGES), "--out", f"{target}/sub.csv", "--workers", "0"],
    ]
    if where == "a file":  # predict --out pointing at an existing folder
        commands.append(["predict", str(trained_run), str(synth_data / TEST_IMAGES), "--out", str(tmp_path),
                         "--workers", "0"])
    for argv in commands:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, code, err)


def test_score_and_help_import_neither_torch_nor_lightning(tmp_path):
    """Scoring a submission is pandas and numpy: `pneumodet score` (and every --help) must not pay for torch."""
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\na,10,10,50,50,1\nb,,,,,0\n")
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\na,0.9 10 10 50 50\nb,\n")
    code = ("import sys\nfrom pneumodet.cli import main\ntry:\n    status = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    status = e.code\nheavy = sorted({'torch', 'torchvision', 'lightning'} & set(sys.modules))\n"
            "print('HEAVY', heavy, 'STATUS', status)")
    for args in (["--help"], ["score", "--help"], ["score", "sub.csv", "--labels", "labels.csv"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=120)
        assert "HEAVY [] STATUS 0" in proc.stdout, (args, proc.stdout[-500:], proc.stderr[-500:])
    assert '"rsna_map": 1.0' in proc.stdout  # the score itself ran
