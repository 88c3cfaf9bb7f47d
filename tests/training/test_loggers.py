import importlib.util

import pytest

from pneumodet.config import ConfigError
from pneumodet.errors import UserError
from pneumodet.runs import read_metrics
from pneumodet.training.train import train
from tests.conftest import tiny_config


def test_tensorboard_and_mlflow_show_every_epoch_of_metrics_csv(tiny_cache, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train(tiny_config("train.loggers=['csv', 'tensorboard', 'mlflow']", "train.epochs=3",
                               "train.stages=[{'until_epoch': 3}]"), tiny_cache, run=tmp_path / "run",
                   progress=False)
    rows = read_metrics(result.run / "metrics.csv")
    assert len(rows) == 3

    events = EventAccumulator(str(result.run / "tensorboard")).Reload()
    for column in ("train_loss", "val_loss_classifier", "val_rsna_map", "lr"):
        seen = events.Scalars(f"csv/{column}")
        assert [pytest.approx(e.value, rel=1e-4, abs=1e-6) for e in seen] == [r[column] for r in rows], column
        assert [e.step for e in seen] == sorted({e.step for e in seen}) and seen[-1].step > 0

    client = MlflowClient((result.run / "mlruns").resolve().as_uri())
    run_id = (result.run / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == "run" and run.data.params["train/epochs"] == "3"
    history = client.get_metric_history(run_id, "csv/val_rsna_map")
    assert [pytest.approx(m.value, abs=1e-6) for m in history] == [r["val_rsna_map"] for r in rows]

    # resumed for 1 more epoch, it goes on in the same MLflow run and event folder
    from pneumodet.runs import RunPaths

    config_path = RunPaths(result.run).config
    config_path.write_text(config_path.read_text().replace("epochs: 3", "epochs: 4").replace("until_epoch: 3",
                                                                                            "until_epoch: 4"))
    train(None, tiny_cache, run=result.run, resume=True, progress=False)
    assert (result.run / "mlflow_run_id").read_text().strip() == run_id
    assert len(client.get_metric_history(run_id, "csv/val_rsna_map")) == 4


def test_a_missing_extra_is_one_line_naming_it_before_anything_is_written(tiny_cache, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"tensorboard needs the tensorboard extra: pip install 'pneumodet\[tensorboard\]'"):
        train(tiny_config("train.loggers=['csv', 'tensorboard']"), tiny_cache, run=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_unknown_logger_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean tensorboard"):
        tiny_config("train.loggers=['csv', 'tensorbord']")


def test_an_unreachable_mlflow_server_is_one_line_within_a_second(tiny_cache, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")  # the discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(UserError, match="no MLflow server answers there"):
        train(tiny_config("train.loggers=['csv', 'mlflow']"), tiny_cache, run=tmp_path / "run", progress=False)
    assert time.monotonic() - start < 5 and not (tmp_path / "run").exists()  # said before anything is written
