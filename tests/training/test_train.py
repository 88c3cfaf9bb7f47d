import json
import math
import re
import shutil
import time

import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EMAWeightAveraging

from pneumodet.checkpoints import load_trained, read_checkpoint
from pneumodet.data.dataset import PneumoniaDataset
from pneumodet.data.prepare import prepare
from pneumodet.errors import UserError
from pneumodet.runs import LOSS_NAMES, METRIC_COLUMNS, read_metrics
from pneumodet.training.module import DetectionModule, TrainingDiverged, losses_without_learning, stage_for
from pneumodet.training.train import train, train_folds
from tests.conftest import tiny_config


def test_a_run_folder_with_every_loss_for_train_and_val(tiny_cache, tmp_path):
    result = train(tiny_config("model.gate=True"), tiny_cache, runs_base=tmp_path, progress=False)
    assert result.run == tmp_path / "tiny" and result.epochs == 2
    rows = read_metrics(result.run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    header = (result.run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == METRIC_COLUMNS
    for row in rows:
        for split in ("train", "val"):
            for name in LOSS_NAMES:
                assert math.isfinite(row[f"{split}_{name}"]) and row[f"{split}_{name}"] >= 0, (split, name)
        assert 0 <= row["val_rsna_map"] <= 1 and row["epoch_time_s"] > 0 and row["lr"] == pytest.approx(1e-3)
        assert 0 <= row["val_gate_auc"] <= 1
    for name in ("config.yaml", "env.txt", "weights/best.ckpt", "weights/last.ckpt", "plots/loss_curves.png",
                 "plots/val_map.png", "plots/augmentations.png"):
        assert (result.run / name).is_file(), name
    saved = yaml.safe_load((result.run / "config.yaml").read_text())
    assert saved["data"]["image_size"] == 64 and saved["model"]["backbone"] == "tiny_fpn"
    checkpoint = torch.load(result.run / "weights" / "last.ckpt", weights_only=True)  # plain types only
    assert checkpoint["pneumodet"]["epoch"] == 2 and checkpoint["pneumodet"]["class_names"] == ["background", "opacity"]
    model, config, info = load_trained(result.run)
    assert not model.training and config.data.image_size == 64
    # a second run with the same name gets its own folder
    again = train(tiny_config("train.epochs=1"), tiny_cache, runs_base=tmp_path, progress=False)
    assert again.run == tmp_path / "tiny-2"
    # without a gate there is no gate loss: NaN, never a made-up 0
    assert math.isnan(read_metrics(again.run / "metrics.csv")[0]["train_loss_gate"])


def test_resume_continues_epochs_and_optimizer_state(tiny_cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config("train.epochs=1"), tiny_cache, run=run, progress=False)
    first = read_checkpoint(run / "weights" / "last.ckpt")
    before = read_metrics(run / "metrics.csv")[0]
    saved_state = first["optimizer_states"][0]["state"]
    assert saved_state and first["epoch"] == 0
    # as if the run had been killed after its first epoch of two
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    restored = {}

    def capture(self):
        state = self.optimizers().optimizer.state_dict()["state"]  # live tensors: later steps change them
        restored.update({k: {n: t.clone() for n, t in v.items()} for k, v in state.items()})

    monkeypatch.setattr(DetectionModule, "on_train_start", capture, raising=False)
    result = train(None, tiny_cache, run=run, resume=True, progress=False)
    assert result.epochs == 2
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0] == before  # the resumed run ends epoch 1 again without training it: its row stays
    assert set(restored) == set(saved_state)
    key = next(iter(saved_state))
    assert torch.equal(restored[key]["exp_avg"], saved_state[key]["exp_avg"])
    last = read_checkpoint(run / "weights" / "last.ckpt")
    assert last["pneumodet"]["epoch"] == 2 and last["global_step"] == 2 * first["global_step"]


def test_existing_run_folder_is_never_overwritten(tiny_cache, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something").write_text("x")
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(), tiny_cache, run=tmp_path / "taken", progress=False)
    with pytest.raises(UserError, match="nothing to resume"):
        train(None, tiny_cache, run=tmp_path / "empty", resume=True, progress=False)


def test_non_finite_losses_skip_steps_then_stop_the_run(tiny_cache, tmp_path, monkeypatch):
    real_step = DetectionModule.training_step
    calls = {"n": 0}

    def one_nan(self, batch, batch_idx):
        calls["n"] += 1
        if calls["n"] == 1:
            self.model.forward = lambda *a, **k: {"loss_classifier": torch.tensor(float("nan"))}
            try:
                return real_step(self, batch, batch_idx)
            finally:
                del self.model.forward
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(DetectionModule, "training_step", one_nan)
    with pytest.warns(UserWarning, match="non-finite loss"):
        result = train(tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]"), tiny_cache,
                       run=tmp_path / "one", progress=False)
    assert read_metrics(result.run / "metrics.csv")[0]["skipped_steps"] == 1

    def always_nan(self, batch, batch_idx):
        self.model.forward = lambda *a, **k: {"loss_classifier": torch.tensor(float("inf"))}
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(DetectionModule, "training_step", always_nan)
    with pytest.raises(TrainingDiverged, match="2 non-finite losses in a row"), pytest.warns(UserWarning):
        train(tiny_config("train.max_nonfinite=2", "train.limit_train_batches=3"), tiny_cache,
              run=tmp_path / "diverged", progress=False)


def test_val_losses_leave_batchnorm_statistics_alone():
    from pneumodet.model import build_model

    config = tiny_config()
    model = build_model(config.model, 64)
    model.eval()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    images = [torch.rand(1, 64, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1]),
                "masks": torch.ones(1, 64, 64, dtype=torch.uint8)}]
    losses = losses_without_learning(model, images, targets)
    assert "loss_mask" in losses and not losses["loss_mask"].requires_grad
    assert torch.equal(bn.running_mean, before) and not model.training


def test_stage_schedule():
    config = tiny_config()
    stages = config.train.stages
    assert stage_for(stages, 0).layers == "heads" and stage_for(stages, 1).layers == "all"
    assert stage_for(stages, 9).layers == "all"  # past the end: the last stage


def test_cpu_runs_repeat_with_a_seed(tiny_cache, tmp_path):
    config = tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]")
    a = train(config, tiny_cache, run=tmp_path / "a", progress=False)
    b = train(config, tiny_cache, run=tmp_path / "b", progress=False)
    row_a, row_b = read_metrics(a.run / "metrics.csv")[0], read_metrics(b.run / "metrics.csv")[0]
    assert row_a["train_loss"] == row_b["train_loss"] and row_a["val_loss"] == row_b["val_loss"]


@pytest.mark.slow
def test_two_cpu_processes_with_ddp(tiny_cache, tmp_path):
    """Lightning DDP over gloo: two processes, two steps each; one run folder, one metrics row."""
    import subprocess
    import sys

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]",
                                                 "train.threads=1").to_dict()))
    proc = subprocess.run(
        [sys.executable, "-m", "pneumodet.cli", "train", "--config", str(config), "--data", str(tiny_cache),
         "--run", str(tmp_path / "ddp"), "--set", "train.accelerator='cpu'", "--set", "train.devices=2",
         "--set", "train.strategy='ddp'", "--set", "train.limit_train_batches=2"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"best val RSNA mAP [\d.]+ at epoch 1/1; steps waited for data \d+% of the time", proc.stdout)
    rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1] and 0 <= rows[0]["data_wait_s"] < rows[0]["epoch_time_s"]
    checkpoint = read_checkpoint(tmp_path / "ddp" / "weights" / "last.ckpt")
    assert checkpoint["global_step"] == 2  # 2 steps per process, in lock step


def test_heads_stage_freezes_the_backbone_and_stages_set_the_learning_rate(tiny_cache, tmp_path, monkeypatch):
    seen = {"lr": [], "params": []}

    def snapshot(self):
        seen["params"].append({n: p.detach().clone() for n, p in self.model.named_parameters()})

    def record_lr(self, outputs, batch, batch_idx):
        seen["lr"].append((self.current_epoch, self.optimizers().optimizer.param_groups[0]["lr"]))

    monkeypatch.setattr(DetectionModule, "on_train_start", snapshot, raising=False)
    monkeypatch.setattr(DetectionModule, "on_train_epoch_end", snapshot, raising=False)
    monkeypatch.setattr(DetectionModule, "on_train_batch_end", record_lr, raising=False)
    config = tiny_config("train.stages=[{'until_epoch': 1, 'layers': 'heads'}, {'until_epoch': 2, 'lr_scale': 0.1}]")
    result = train(config, tiny_cache, run=tmp_path / "run", progress=False)
    start, after_heads, after_all = seen["params"]
    backbone = [n for n in start if n.startswith("backbone.body.")]
    heads = [n for n in start if not n.startswith("backbone.body.")]
    assert backbone and heads
    assert all(torch.equal(start[n], after_heads[n]) for n in backbone), "the heads stage moved the backbone"
    assert any(not torch.equal(start[n], after_heads[n]) for n in heads), "the heads stage trained nothing"
    assert any(not torch.equal(after_heads[n], after_all[n]) for n in backbone), "the all stage left it frozen"
    # the optimizer really ran at each stage's rate, and metrics.csv says so
    assert {epoch: lr for epoch, lr in seen["lr"]} == {0: pytest.approx(1e-3), 1: pytest.approx(1e-4)}
    assert [r["lr"] for r in read_metrics(result.run / "metrics.csv")] == [pytest.approx(1e-3), pytest.approx(1e-4)]


def test_a_run_is_scored_on_its_own_split_after_prepare_changes_it(synth_data, tmp_path):
    import pandas as pd

    from pneumodet.data.prepare import prepare
    from pneumodet.evaluate import evaluate

    cache = tmp_path / "cache"
    prepare(synth_data, cache, size_px=64, val_fraction=0.3, seed=0, progress=False, workers=1)
    result = train(tiny_config("model.min_score=0.0"), cache, run=tmp_path / "run", progress=False)
    trained_on = pd.read_csv(result.run / "split.csv", dtype=str)
    assert trained_on.equals(pd.read_csv(cache / "split.csv", dtype=str))
    train_ids = set(trained_on.loc[trained_on["split"] == "train", "patient_id"])
    # prepare again with another seed: the cache's split.csv now puts some training images in val
    prepare(synth_data, cache, size_px=64, val_fraction=0.3, seed=7, progress=False, workers=1)
    moved = pd.read_csv(cache / "split.csv", dtype=str)
    assert set(moved.loc[moved["split"] == "val", "patient_id"]) & train_ids
    evaluate(result.run, progress=False)
    scored = set(pd.read_csv(result.run / "predictions" / "val.csv", dtype=str)["patient_id"])
    assert scored and not scored & train_ids  # evaluate used the run's split, not the cache's new one
    (result.run / "split.csv").unlink()
    with pytest.raises(UserError, match="does not record the split"):
        evaluate(result.run, progress=False)


def test_folds_train_one_run_per_fold_evaluate_out_of_fold_and_predict_as_an_ensemble(synth_data, tmp_path):
    from pneumodet.detector import load_detector
    from pneumodet.evaluate import evaluate
    from pneumodet.io.layout import TEST_IMAGES
    from pneumodet.predict import predict_folder

    prepare(synth_data, tmp_path / "cache", size_px=64, val_fraction=0.2, progress=False, workers=1, folds=2)
    table = pd.read_csv(tmp_path / "cache" / "split.csv", dtype=str)
    config = tiny_config("model.gate=True", "train.epochs=1", "train.stages=[{'until_epoch': 1}]",
                         "train.limit_val_batches=0")
    folds = tmp_path / "folds"
    results = train_folds(config, tmp_path / "cache", 2, folds, progress=False)
    assert [r.run.name for r in results] == ["fold-1", "fold-2"]
    assert json.loads((folds / "folds.json").read_text())["runs"] == ["fold-1", "fold-2"]
    vals = []
    for n, result in enumerate(results):  # each fold's val is exactly its fold; together they cover every image
        split = pd.read_csv(result.run / "split.csv", dtype=str)
        val = set(split.loc[split["split"] == "val", "patient_id"])
        assert val == set(table.loc[table["fold"] == str(n), "patient_id"]) and val
        assert set(split["patient_id"]) == set(table["patient_id"])
        vals.append(val)
    assert not vals[0] & vals[1] and vals[0] | vals[1] == set(table["patient_id"])
    # finishing an already finished folds folder trains nothing again
    stamp = (folds / "fold-1" / "weights" / "last.ckpt").stat().st_mtime_ns
    train_folds(None, tmp_path / "cache", 2, folds, resume=True, progress=False)
    assert (folds / "fold-1" / "weights" / "last.ckpt").stat().st_mtime_ns == stamp
    # a fold killed (or still training) mid-schedule is no model of the ensemble: evaluate and predict refuse it
    half = tmp_path / "half"
    shutil.copytree(folds, half)
    last = half / "fold-2" / "weights" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["pneumodet"]["config"]["train"]["epochs"] = 3  # as if it stopped after epoch 1 of 3
    torch.save(checkpoint, last)
    for use in (lambda: evaluate(half, progress=False), lambda: load_detector(half)):
        with pytest.raises(UserError, match=f"fold-2: this fold stopped at epoch 1 of 3; finish it with pneumodet "
                                            f"train --folds 2 --run {half} --resume"):
            use()
    result = evaluate(folds, progress=False)
    assert result["split"] == "out-of-fold" and result["n_images"] == len(table)  # every labelled image, once
    assert [f["run"] for f in result["folds"]] == ["fold-1", "fold-2"]
    assert "gate_threshold" in result["postprocess"] and result["image_level"]["gate_roc_auc"] is not None
    # serve FOLDS reviews every out-of-fold prediction
    from fastapi.testclient import TestClient

    from pneumodet.service.app import create_app

    review = TestClient(create_app(folds)).get("/api/review").json()
    assert review["note"] == "" and len(review["items"]) == len(table)
    assert all(it["image_score"] is not None for it in review["items"])
    detector = load_detector(folds)
    assert len(detector.backends) == 2 and detector.postprocess.score_threshold == \
        result["postprocess"]["score_threshold"]
    summary = predict_folder(folds, synth_data / TEST_IMAGES, tmp_path / "sub.csv", workers=0, progress=False)
    assert summary.images == len(list((synth_data / TEST_IMAGES).glob("*.dcm")))
    with pytest.raises(UserError, match="folds"):
        train_folds(config, tmp_path / "cache", 3, tmp_path / "other", progress=False)


def test_a_run_records_how_long_its_steps_waited_for_data_and_says_when_the_loader_starves(tiny_cache, tmp_path,
                                                                                            monkeypatch):
    # each training image takes 0.1 s to load (8 per epoch: 0.8 s of waiting), each step 0.5 s to run, and
    # each val image 0.2 s: only the first is waiting for data
    real_item, real_step = PneumoniaDataset.__getitem__, DetectionModule.training_step

    def slow_item(self, index):
        time.sleep(0.1 if self.transforms is not None else 0.2)
        return real_item(self, index)

    def slow_step(self, batch, batch_idx):
        time.sleep(0.5)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(PneumoniaDataset, "__getitem__", slow_item)
    monkeypatch.setattr(DetectionModule, "training_step", slow_step)
    with pytest.warns(UserWarning, match=r"waited for data \d+% of its time .* raise data.num_workers \(now 0\)"):
        result = train(tiny_config(), tiny_cache, run=tmp_path / "slow", progress=False)
    rows = read_metrics(result.run / "metrics.csv")
    for row in rows:
        assert 0.8 <= row["data_wait_s"] < 1.2, row["data_wait_s"]  # not the steps, not validation
        assert row["epoch_time_s"] > row["data_wait_s"] + 1.0 + 1.6  # and the steps, and the val images
    assert result.data_wait_share == pytest.approx(sum(r["data_wait_s"] for r in rows)
                                                   / sum(r["epoch_time_s"] for r in rows))


def test_validating_every_few_steps_ends_with_the_last_epoch_and_trains_the_same_weights(tiny_cache, tmp_path):
    # 2 steps per epoch: every 4 steps is every 2nd epoch, and 5 epochs end on one Lightning would skip
    schedule = ("train.epochs=5", "train.stages=[{'until_epoch': 5}]")
    every = train(tiny_config(*schedule), tiny_cache, run=tmp_path / "every", progress=False)
    sparse = train(tiny_config(*schedule, "train.val_every_steps=4"), tiny_cache, run=tmp_path / "sparse",
                   progress=False)
    reference, rows = read_metrics(every.run / "metrics.csv"), read_metrics(sparse.run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference] == [1, 2, 3, 4, 5]  # a row per epoch
    validated = [r["epoch"] for r in rows if not math.isnan(r["val_rsna_map"])]
    assert validated == [2, 4, 5] and sparse.epochs == 5
    for row, ref in zip(rows, reference, strict=True):
        assert row["train_loss"] == ref["train_loss"] and row["epoch_time_s"] > 0  # the same training, epoch by epoch
        if row["epoch"] in validated:
            assert row["val_loss"] == ref["val_loss"] and row["val_rsna_map"] == ref["val_rsna_map"]
        else:
            assert all(math.isnan(row[f"val_{name}"]) for name in LOSS_NAMES)
    last = read_checkpoint(sparse.run / "weights" / "last.ckpt")
    assert last["pneumodet"]["epoch"] == 5  # the last epoch is validated and saved
    # validation draws no random number training would have drawn: the same weights at the end
    weights = read_checkpoint(every.run / "weights" / "last.ckpt")["state_dict"]
    assert weights.keys() == last["state_dict"].keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, last["state_dict"][name]), name
    assert (sparse.run / "plots" / "val_map.png").is_file()


def test_ema_weights_are_the_ones_a_run_uses_and_survive_a_resume(tiny_cache, tmp_path, monkeypatch):
    schedule = ("train.epochs=2", "train.stages=[{'until_epoch': 2}]")
    plain = train(tiny_config(*schedule), tiny_cache, run=tmp_path / "plain", progress=False)
    ema = train(tiny_config(*schedule, "train.ema_decay=0.5"), tiny_cache, run=tmp_path / "ema", progress=False)
    trained = read_checkpoint(plain.run / "weights" / "last.ckpt")["state_dict"]
    last = read_checkpoint(ema.run / "weights" / "last.ckpt")
    # the average is what the checkpoint serves; the trained weights beside it are those of a run without EMA
    assert last["current_model_state"].keys() == trained.keys() == last["state_dict"].keys()
    assert all(torch.equal(t, last["current_model_state"][k]) for k, t in trained.items())
    assert not torch.equal(last["state_dict"]["model.roi_heads.box_predictor.cls_score.weight"],
                           trained["model.roi_heads.box_predictor.cls_score.weight"])
    model, _, _ = load_trained(ema.run)
    served = model.state_dict()
    assert all(torch.equal(served[k.removeprefix("model.")], t) for k, t in last["state_dict"].items())
    # validation scores the average: its val loss is not the trained weights'
    assert read_metrics(ema.run / "metrics.csv")[-1]["val_loss"] != read_metrics(plain.run / "metrics.csv")[-1]["val_loss"]
    # killed after epoch 1 and resumed: the average goes on from where it was, and training from the trained weights
    run = tmp_path / "resumed"
    train(tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]", "train.ema_decay=0.5"), tiny_cache,
          run=run, progress=False)
    first = read_checkpoint(run / "weights" / "last.ckpt")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"], config["train"]["stages"] = 2, [{"until_epoch": 2, "lr_scale": 1.0, "layers": "all"}]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    restored = {}

    def capture(self):
        average = next(c for c in self.trainer.callbacks if isinstance(c, EMAWeightAveraging))._average_model
        restored.update(average={k: t.clone() for k, t in average.module.state_dict().items()},  # live tensors
                        current={k: t.clone() for k, t in self.state_dict().items()})

    monkeypatch.setattr(DetectionModule, "on_train_start", capture, raising=False)
    train(None, tiny_cache, run=run, resume=True, progress=False)
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, restored["average"][name]), name
        assert torch.equal(first["current_model_state"][name], restored["current"][name]), name
    assert not all(torch.equal(first["state_dict"][k], t) for k, t in first["current_model_state"].items())


def test_the_augmentation_gallery_draws_nothing_training_would(tiny_cache, tmp_path, monkeypatch):
    """Training's random numbers do not depend on how many the gallery drew: the same run with a gallery that
    draws a thousand more numbers trains the same weights."""
    from pneumodet.report import plots

    real = plots.plot_augmentations

    def greedy(*args, **kwargs):
        torch.rand(1000)
        return real(*args, **kwargs)

    first = train(tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]"), tiny_cache,
                  run=tmp_path / "a", progress=False)
    monkeypatch.setattr(plots, "plot_augmentations", greedy)
    second = train(tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]"), tiny_cache,
                   run=tmp_path / "b", progress=False)
    a = read_checkpoint(first.run / "weights" / "last.ckpt")["state_dict"]
    b = read_checkpoint(second.run / "weights" / "last.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
