"""``train(config, cache)``: a run folder with weights, metrics.csv and plots; resumable; scales out via Lightning."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar

from pneumodet.anchors import AnchorFit, fit_anchors
from pneumodet.checkpoints import fold_runs, read_checkpoint, schedule_progress
from pneumodet.config import RunConfig
from pneumodet.config_files import dump_config, load_run_config
from pneumodet.errors import UserError
from pneumodet.files import remove_stale, write_text_atomic
from pneumodet.memory import keep_freed_memory
from pneumodet.runs import (
    FOLDS_FILE,
    RunPaths,
    new_run_dir,
    read_metrics,
    run_split,
    write_env,
    write_metrics,
    write_split,
)
from pneumodet.training.callbacks import AtomicCheckpointIO, MetricsHistory, ValidateLastEpoch
from pneumodet.training.data import DetectionDataModule
from pneumodet.training.distributed import is_follower
from pneumodet.training.loggers import build_loggers, check_loggers, start_loggers
from pneumodet.training.module import DetectionModule
from pneumodet.training.schedule import schedule_for, val_every_epochs

#: above this share of its time spent waiting for data, a run says its loader starves the step
STARVED_SHARE = 0.10


@dataclass(frozen=True)
class TrainResult:
    run: Path
    best_map: float
    best_epoch: int
    epochs: int
    data_wait_share: float = math.nan  # of the epochs' time, the share the training loop waited for data


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*The number of training batches.*",
                    ".*`isinstance\\(treespec, LeafSpec\\)`.*", ".*Checkpoint directory .* exists and is not empty.*",
                    ".*srun.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=pattern)


RUN_ENV = "PNEUMODET_RUN_DIR"


def open_run(config: RunConfig | None, run: str | Path | None, resume: bool, runs_base: str | Path = "runs"
             ) -> tuple[RunConfig, RunPaths, bool]:
    """Return (configuration, paths, whether it continues from a checkpoint) for a new run or the run being
    resumed. A run killed before its first checkpoint is started over in its folder with its own config.yaml;
    a finished run is refused (nothing to resume). Creates nothing."""
    if is_follower():  # rank 0 chose and created the folder; Lightning's workers inherit it
        root = run or os.environ.get(RUN_ENV)  # a fold names its own folder; a plain run may take rank 0's
        if root is None:
            raise UserError("a DDP worker on another node needs --run DIR (the same folder as rank 0)")
        paths = RunPaths(Path(root))
        return (_run_config(paths) if resume else config), paths, resume and paths.last.is_file()
    if resume:
        if run is None:
            raise UserError("--resume needs --run DIR (the run folder to continue)")
        paths = RunPaths(Path(run))
        if not paths.config.is_file() and not paths.last.is_file():
            raise UserError(f"{paths.root}: nothing to resume: not a run folder (no config.yaml, no weights/last.ckpt); "
                            "train a new run with --config")
        config, progress = _run_config(paths), schedule_progress(paths)
        if progress is not None and progress[0] >= config.train.epochs:
            raise UserError(f"{paths.root}: finished all {config.train.epochs} epochs of its config.yaml; nothing to "
                            "resume (evaluate it, or train a new run for a longer schedule)")
        return config, paths, progress is not None
    if run is not None:
        root = Path(run)
        if root.exists() and any(root.iterdir()):
            raise UserError(f"{root}: run folder exists and is not empty; use --resume to continue it "
                            "or choose another --run")
    else:
        root = new_run_dir(runs_base, config.name)
    return config, RunPaths(root), False


def _run_config(paths: RunPaths) -> RunConfig:
    """Return the configuration in a run's config.yaml, checked against the one its last checkpoint holds."""
    like = read_checkpoint(paths.last, mmap=True)["pneumodet"]["config"] if paths.last.is_file() else None
    return load_run_config(paths.config, like)


def _start_over(paths: RunPaths) -> None:
    """Remove what a run killed before its first checkpoint wrote, but its config.yaml and split.csv."""
    for entry in paths.root.iterdir():
        if entry.name in (paths.config.name, paths.split.name, ANCHORS_FILE):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_trainer(cfg) -> None:
    """Raise a one-line UserError if Lightning refuses ``train``'s accelerator, devices, strategy or precision on
    this machine (a GPU asked for where there is none, an unknown strategy): before anything is written."""
    try:
        L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
                  precision=cfg.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    except Exception as exc:  # Lightning's MisconfigurationException, ValueError, RuntimeError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"train.accelerator={cfg.accelerator}, devices={cfg.devices}, strategy={cfg.strategy}, "
                        f"precision={cfg.precision}: {reason[:240]}") from None


#: in a run folder trained with model.anchors: data, the fit and how it compared with the fixed anchors
ANCHORS_FILE = "anchors.json"


def fitted_anchors(config: RunConfig, datamodule: DetectionDataModule) -> tuple[RunConfig, AnchorFit]:
    """Return ``config`` with its anchors fitted to the training boxes (or kept, as the fit says) and the fit."""
    model = config.model
    fit = fit_anchors(datamodule.train_boxes_wh(), model.anchor_sizes, model.anchor_ratios)
    return replace(config, model=replace(model, anchor_sizes=fit.sizes, anchor_ratios=fit.ratios)), fit


def train(config: RunConfig | None, cache: str | Path, run: str | Path | None = None, resume: bool = False,
          runs_base: str | Path = "runs", progress: bool = True, split: pd.DataFrame | None = None) -> TrainResult:
    """Train (or resume) a run on the prepared ``cache``; return its folder and best val RSNA mAP.

    ``split``: the (patient_id, split) table to train on (default: the cache's split.csv).
    """
    _quiet_lightning()
    config, paths, from_checkpoint = open_run(config, run, resume, runs_base)
    cfg = config.train
    check_loggers(cfg.loggers)  # a missing extra is said before anything is written
    check_trainer(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()  # each step reuses the last one's pages (pneumodet.memory)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # a resumed run goes on with the split it started with, whatever the cache's split.csv says now
    if resume and paths.split.is_file():
        split = run_split(paths)
    datamodule = DetectionDataModule(cache, config, split)
    config = schedule_for(config, len(datamodule.train_set))  # train.steps: the same length on any data set
    datamodule.config, cfg = config, config.train
    fit = None
    if config.model.anchors == "data" and not resume:  # a resumed run's config.yaml holds the fitted anchors
        config, fit = fitted_anchors(config, datamodule)
        datamodule.config = config
        if progress and not is_follower():
            print(fit.summary(), flush=True)
    val_every = val_every_epochs(cfg, len(datamodule.train_set))
    if cfg.steps and progress and not is_follower():
        validating = f"; validating every {val_every} epochs and after the last" if val_every > 1 else ""
        print(f"train.steps={cfg.steps}: {cfg.epochs} epochs over {len(datamodule.train_set)} training images, stages "
              f"until epochs {', '.join(str(s.until_epoch) for s in cfg.stages)}{validating}", flush=True)
    module = DetectionModule(config, cache=str(Path(cache).resolve()))
    if not from_checkpoint and not is_follower():  # the folder appears once data and model are known to be good
        if resume:  # killed before its first checkpoint: the same run from its start
            _start_over(paths)
        paths.make()
        dump_config(config, paths.config)
        if fit is not None:
            write_text_atomic(paths.root / ANCHORS_FILE, json.dumps(fit.to_dict(), indent=2) + "\n")
        write_env(paths.env)
        write_split(paths, datamodule.split_table)  # evaluate and serve score the run on this split only
    os.environ[RUN_ENV] = str(paths.root.resolve())  # for the worker processes Lightning starts
    # two callbacks: Lightning writes save_last only when the monitored value improved
    best = ModelCheckpoint(dirpath=paths.weights, filename="best", monitor="val/rsna_map", mode="max",
                           save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False,
                           save_on_train_epoch_end=False)
    last = ModelCheckpoint(dirpath=paths.weights, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False, auto_insert_metric_name=False,
                           save_on_train_epoch_end=False)
    loggers = build_loggers(config, paths)
    # Lightning's EMA swaps the average in for validation and writes it as the checkpoint's state_dict, the
    # weights load_trained reads; the trained weights go to current_model_state, which --resume restores
    ema = [EMAWeightAveraging(decay=cfg.ema_decay)] if cfg.ema_decay else []
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        check_val_every_n_epoch=val_every,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip or None,
        callbacks=[MetricsHistory(paths), ValidateLastEpoch(), *ema, best, last] + ([TQDMProgressBar(leave=True)] if progress else []),
        plugins=[AtomicCheckpointIO()],
        logger=loggers or False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=cfg.limit_train_batches or None,
        limit_val_batches=cfg.limit_val_batches or None,
        default_root_dir=paths.root,
    )
    if not is_follower() and not from_checkpoint:  # before fit, Lightning does not know the ranks yet
        _draw_augmentations(datamodule, config, paths)
    if not is_follower() and from_checkpoint:  # forget rows of epochs the checkpoint does not have
        done = read_checkpoint(paths.last)["pneumodet"]["epoch"]  # and its checksums verified before Lightning
        write_metrics(paths.metrics_csv, [r for r in read_metrics(paths.metrics_csv) if r["epoch"] <= done])
    if not is_follower():
        remove_stale(paths.weights)  # a checkpoint write a kill cut short
        start_loggers(loggers, config, paths, from_checkpoint)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(paths.last) if from_checkpoint else None)
    result = trained_result(paths)
    if result.data_wait_share > STARVED_SHARE and not is_follower():
        warnings.warn(f"{paths.root}: the training loop waited for data {result.data_wait_share:.0%} of its time "
                      f"(metrics.csv: data_wait_s); raise data.num_workers (now {config.data.num_workers}) if "
                      "cores are free, or make augmentation cheaper", stacklevel=2)
    return result


def trained_result(paths: RunPaths) -> TrainResult:
    """Return a run's best val RSNA mAP, its epoch and the epochs done, from its metrics.csv."""
    rows = read_metrics(paths.metrics_csv)
    scores = [r["val_rsna_map"] for r in rows]
    top = max(range(len(rows)), key=lambda i: -1 if math.isnan(scores[i]) else scores[i]) if rows else -1
    timed = [r for r in rows if math.isfinite(r["data_wait_s"])]
    spent = sum(r["epoch_time_s"] for r in timed)
    return TrainResult(paths.root, scores[top] if rows else math.nan,
                       int(rows[top]["epoch"]) if rows else 0, len(rows),
                       sum(r["data_wait_s"] for r in timed) / spent if spent > 0 else math.nan)


def fold_table(cache: str | Path, k: int) -> pd.DataFrame:
    """Return the cache's (patient_id, split, fold) table, checked to hold ``k`` folds."""
    from pneumodet.data.dataset import read_split

    table = read_split(Path(cache) / "split.csv")
    if "fold" not in table.columns:
        raise UserError(f"{cache}/split.csv has no folds (prepared by an older pneumodet); "
                        f"run pneumodet prepare --folds {k} again")
    found = table.loc[table["fold"].astype(int) >= 0, "fold"].nunique()  # -1: trains in every fold (distil)
    if found != k:
        raise UserError(f"{cache}/split.csv holds {found} folds, not {k}: run pneumodet prepare --folds {k} "
                        f"or train --folds {found}")
    return table


def train_folds(config: RunConfig | None, cache: str | Path, k: int, folds_dir: str | Path | None = None,
                resume: bool = False, runs_base: str | Path = "runs", progress: bool = True) -> list[TrainResult]:
    """Train one run per fold of the cache's split.csv into ``folds_dir/fold-N`` (every labelled image is in
    exactly one fold's val); ``resume`` finishes the folds an interrupted call left."""
    from pneumodet.data.split import fold_split

    if k < 2:
        raise UserError(f"--folds must be at least 2, got {k}")
    table = fold_table(cache, k)
    if resume:
        if folds_dir is None or not (Path(folds_dir) / FOLDS_FILE).is_file():
            raise UserError(f"{folds_dir}: not a folds folder to resume (no {FOLDS_FILE})")
        root = Path(folds_dir)
        runs = fold_runs(root, trained=False)
        if len(runs) != k:
            raise UserError(f"{root} holds {len(runs)} folds, not {k}")
        config = load_run_config(root / "config.yaml")
    elif is_follower():  # a DDP worker: rank 0 made the folder; this process only joins each fold's training
        root = Path(folds_dir) if folds_dir else Path(os.environ[RUN_ENV]).parent
        runs = [root / f"fold-{i + 1}" for i in range(k)]
    else:
        root = Path(folds_dir) if folds_dir else new_run_dir(runs_base, f"{config.name}-{k}folds")
        if root.exists() and any(root.iterdir()):
            raise UserError(f"{root}: folder exists and is not empty; use --resume to finish its folds "
                            "or choose another --run")
        root.mkdir(parents=True, exist_ok=True)
        runs = [root / f"fold-{i + 1}" for i in range(k)]
        dump_config(config, root / "config.yaml")  # what --resume trains the folds not started yet with
        write_text_atomic(root / FOLDS_FILE, json.dumps({"folds": k, "runs": [r.name for r in runs],
                                                         "cache": str(Path(cache).resolve())}, indent=2) + "\n")
    results = []
    for i, run in enumerate(runs):
        paths = RunPaths(run)
        if progress:
            print(f"fold {i + 1}/{k}: {run}", flush=True)
        if resume and paths.last.is_file():
            done, total = schedule_progress(paths)
            if done >= total:
                results.append(trained_result(paths))
                continue
            results.append(train(None, cache, run, resume=True, progress=progress))
            continue
        if run.exists() and not is_follower():  # killed before its first checkpoint: nothing worth keeping
            shutil.rmtree(run)
        results.append(train(config, cache, run, progress=progress, split=fold_split(table, i)))
    return results


def _draw_augmentations(datamodule: DetectionDataModule, config: RunConfig, paths: RunPaths) -> None:
    from pneumodet.data.dataset import PneumoniaDataset
    from pneumodet.data.transforms import gallery_ops
    from pneumodet.report.plots import plot_augmentations

    plain = PneumoniaDataset(datamodule.root, config.data.image_size, "train", mask_shape=config.data.mask_shape,
                             split_table=datamodule.split_table)
    positives = plain.records.index[plain.records["n_boxes"] > 0]
    index = int(positives[0]) if len(positives) else 0
    image, target = plain[index]
    ops = gallery_ops(config.augment)
    # on a generator state of its own: what the gallery draws must not change what training draws (it did: a
    # gallery of other panels trained another model)
    with torch.random.fork_rng():
        torch.manual_seed(config.train.seed)
        plot_augmentations(image, target, ops, paths.plots / "augmentations.png")
