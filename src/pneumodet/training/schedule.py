"""Training schedules in optimizer steps: the same length of training on a data set of any size."""

from __future__ import annotations

import dataclasses

from pneumodet.config import RunConfig, TrainConfig


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Return the optimizer steps one epoch over ``n_train`` images takes (every process its share of a batch)."""
    per_epoch = max(1, -(-n_train // (cfg.batch_size * cfg.devices * cfg.num_nodes)))
    return min(per_epoch, cfg.limit_train_batches) if cfg.limit_train_batches else per_epoch


def val_every_epochs(cfg: TrainConfig, n_train: int) -> int:
    """Return how many epochs ``train.val_every_steps`` puts between two validations (at least 1)."""
    return max(1, round(cfg.val_every_steps / steps_per_epoch(cfg, n_train)))


def schedule_for(config: RunConfig, n_train: int) -> RunConfig:
    """Return ``config`` with epochs and stages that give ``train.steps`` optimizer steps over ``n_train`` images.

    With ``train.steps`` = 0 the config is returned as it is (a schedule in epochs). Otherwise the epochs
    become ceil(steps / steps per epoch) and each stage keeps its share of the run: 240 images train as
    long as 800 do. Applying it twice gives the same schedule (a resumed run recomputes it).
    """
    cfg = config.train
    if not cfg.steps:
        return config
    per_epoch = steps_per_epoch(cfg, n_train)
    epochs = max(1, -(-cfg.steps // per_epoch))
    bounds, previous = [], 0
    for stage in cfg.stages:
        until = max(previous + 1, round(stage.until_epoch / cfg.epochs * epochs))
        bounds.append(until)
        previous = until
    bounds[-1] = max(bounds[-1], epochs)
    stages = tuple(dataclasses.replace(s, until_epoch=b) for s, b in zip(cfg.stages, bounds, strict=True))
    return dataclasses.replace(config, train=dataclasses.replace(cfg, epochs=epochs, stages=stages))
