"""``DetectionModule``: the Mask R-CNN training and validation loop as a LightningModule."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace

import lightning as L
import numpy as np
import torch
from torch import nn

from pneumodet import __version__
from pneumodet.config import RunConfig, Stage
from pneumodet.errors import RunFailure
from pneumodet.metrics import Prediction, best_threshold, roc_auc, rsna_map
from pneumodet.model import CLASS_NAMES, boxes_only, build_model, head_parameters, swapped
from pneumodet.postprocess import PostProcess, postprocess
from pneumodet.runs import LOSS_NAMES


class TrainingDiverged(RunFailure):
    """Too many non-finite losses in a row: the run stops with this message."""


def stage_for(stages: tuple[Stage, ...], epoch: int) -> Stage:
    """Return the stage that covers ``epoch`` (0-based): the first whose until_epoch is above it."""
    for stage in stages:
        if epoch < stage.until_epoch:
            return stage
    return stages[-1]


def losses_without_learning(model: nn.Module, images, targets) -> dict[str, torch.Tensor]:
    """Return torchvision's loss dict (it computes losses only in training mode) without gradients
    and without touching BatchNorm statistics; the model's modes are restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    try:
        with torch.no_grad():
            return model(images, targets)
    finally:
        for module, mode in modes.items():
            module.train(mode)


class DetectionModule(L.LightningModule):
    def __init__(self, config: RunConfig, cache: str = ""):
        super().__init__()
        self.config, self.cache = config, cache
        self.model = build_model(config.model, config.data.image_size)
        self.head_names = {id(p) for p in head_parameters(self.model)}
        # what "all layers" trains: the builder's choice (trainable_layers); "heads" trains a subset
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self._sums: dict[str, dict[str, float]] = {}
        self._val_outputs: list = []
        self._rng: tuple = ()
        self.epoch_batches = 0  # training batches this process ran in the current epoch
        self._epoch_start = time.perf_counter()
        # seconds this epoch's loop spent between batches, most of it waiting for the loader's next batch
        self.data_wait_s = 0.0
        self._batch_done_at = self._epoch_start
        self.history_row: dict = {}

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.config.train
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def current_lr(self) -> float:
        cfg = self.config.train
        lr = cfg.lr * stage_for(cfg.stages, self.current_epoch).lr_scale
        if cfg.warmup_steps and self.global_step < cfg.warmup_steps:
            lr *= (self.global_step + 1) / cfg.warmup_steps
        return lr

    def _heads_only(self) -> bool:
        return stage_for(self.config.train.stages, self.current_epoch).layers == "heads"

    def on_train_epoch_start(self):
        self.epoch_batches = 0
        self._epoch_start = self._batch_done_at = time.perf_counter()
        self.data_wait_s = 0.0
        self._sums = {}
        self.skipped_steps = 0
        if self.trainer.world_size == 1:  # under DDP the set of trained parameters must not change
            heads_only = self._heads_only()
            for p in self.trainable:
                p.requires_grad_(not heads_only or id(p) in self.head_names)

    def on_train_batch_start(self, batch, batch_idx):
        # Lightning fetches each batch between the last one's end and this hook (a loader with a length is not
        # prefetched), so this interval is what the step waited for its data
        self.data_wait_s += time.perf_counter() - self._batch_done_at
        self.epoch_batches += 1
        lr = self.current_lr()
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = lr

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._batch_done_at = time.perf_counter()

    def on_before_optimizer_step(self, optimizer):
        if self.trainer.world_size > 1 and self._heads_only():
            for p in self.trainable:
                if id(p) not in self.head_names:
                    p.grad = None

    # -- steps ----------------------------------------------------------------------------------
    def _targets(self, targets, limit: int):
        return [{k: (v[:limit] if k in ("boxes", "labels", "masks") else v) for k, v in t.items()}
                for t in targets]

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(list(images), self._targets(targets, self.config.data.max_boxes))
        total = sum(losses.values())
        if not torch.isfinite(total):
            self.nonfinite_in_a_row += 1
            self.skipped_steps += 1
            warnings.warn(f"non-finite loss at epoch {self.current_epoch} step {batch_idx} "
                          f"({ {k: float(v) for k, v in losses.items()} }); step skipped", stacklevel=1)
            if self.nonfinite_in_a_row >= self.config.train.max_nonfinite:
                raise TrainingDiverged(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row at epoch {self.current_epoch}: "
                    f"training diverged; lower train.lr or raise train.warmup_steps")
            return None
        self.nonfinite_in_a_row = 0
        self._accumulate("train", {"loss": total, **losses}, len(images))
        self.log("loss", total.detach(), prog_bar=True, batch_size=len(images))
        return total

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        images, targets = list(images), list(targets)
        losses = losses_without_learning(self.model, images, targets)
        total = sum(losses.values())
        if torch.isfinite(total):
            self._accumulate("val", {"loss": total, **losses}, len(images))
        self.model.eval()
        with torch.no_grad(), boxes_only(self.model), swapped(self.model.roi_heads,
                                                             box_vote=self.config.predict.box_vote):
            detections = self.model(images)
        for target, det in zip(targets, detections, strict=True):
            self._val_outputs.append((target["boxes"].cpu().numpy(), det["boxes"].float().cpu().numpy(),
                                      det["scores"].float().cpu().numpy(),
                                      float(det["gate"]) if "gate" in det else math.nan))

    def _accumulate(self, split: str, losses: dict, n: int) -> None:
        sums = self._sums.setdefault(split, {"n": 0.0})
        sums["n"] += n
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * n

    def _reduced(self, split: str) -> dict[str, float]:
        sums = self._sums.get(split, {"n": 0.0})
        keys = ["n", *LOSS_NAMES]
        vector = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
        if self.trainer.world_size > 1:
            vector = self.trainer.strategy.reduce(vector.to(self.device), reduce_op="sum").cpu()
        n = float(vector[0])
        seen = {k: k in sums for k in keys[1:]}  # a loss the model does not have (loss_gate without a gate): NaN
        return {k: (float(v) / n if n and seen[k] else math.nan) for k, v in zip(keys[1:], vector[1:], strict=True)}

    def on_validation_epoch_start(self):
        self._val_outputs = []
        self._sums.pop("val", None)
        # the val losses sample RoIs at random: training must draw the same numbers however often it validates
        self._rng = torch.random.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)

    def epoch_row(self) -> dict:
        """Return this epoch's metrics.csv row without validation: train losses, lr, time (and this process's wait
        for data); val columns NaN. Every process calls it (the losses are summed over processes)."""
        train = self._reduced("train")
        row = {"epoch": self.current_epoch + 1}
        row.update({f"train_{k}": train[k] for k in LOSS_NAMES})
        row.update({f"val_{k}": math.nan for k in LOSS_NAMES})
        row.update({"val_rsna_map": math.nan, "val_threshold": math.nan, "val_gate_auc": math.nan, "lr": self.current_lr(),
                    "epoch_time_s": time.perf_counter() - self._epoch_start, "skipped_steps": self.skipped_steps,
                    "data_wait_s": self.data_wait_s})
        return row

    def on_validation_epoch_end(self):
        cpu, cuda = self._rng
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        outputs = self._val_outputs
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = [o for part in gathered for o in part]
        truths = [o[0] for o in outputs]
        # post-processed as evaluate and predict do (NMS, max boxes, shrink), so best.ckpt is chosen on the
        # score the run will report; the threshold is the best on val, as evaluate's tuning would find
        pp = replace(PostProcess.from_config(self.config.predict), score_threshold=0.0)
        predictions = [Prediction(*postprocess(o[1], o[2], pp, o[3])) for o in outputs]
        threshold, score = best_threshold(truths, predictions) if outputs else (0.0, 0.0)
        every_box = rsna_map(truths, predictions).rsna_map if outputs else 0.0
        if every_box > score:  # no threshold beats keeping every box
            threshold, score = 0.0, every_box
        val = self._reduced("val")
        row = self.epoch_row()
        row.update({f"val_{k}": val[k] for k in LOSS_NAMES})
        gates = np.array([o[3] for o in outputs])
        gate_auc = roc_auc(np.array([len(t) > 0 for t in truths]), gates) \
            if len(gates) and not np.isnan(gates).any() else math.nan
        row.update({"val_rsna_map": score, "val_threshold": threshold, "val_gate_auc": gate_auc})
        self.history_row = row
        self.log("val/rsna_map", float(score), prog_bar=True)
        self.log("val/loss", float(val["loss"]) if not math.isnan(val["loss"]) else np.inf)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["pneumodet"] = {
            "config": self.config.to_dict(),
            "class_names": list(CLASS_NAMES),
            "version": __version__,
            "cache": self.cache,
            "epoch": self.current_epoch + 1,
            "metrics": {k: float(v) for k, v in self.history_row.items()},
        }
