"""``DetectionModule``: the Mask R-CNN training and validation loop as a LightningModule."""

from __future__ import annotations

import math
import time
import warnings

import lightning as L
import numpy as np
import torch
from torch import nn

from pneumodet import __version__
from pneumodet.boxes import xywh_to_xyxy
from pneumodet.config import RunConfig, Stage
from pneumodet.errors import RunFailure
from pneumodet.forward import TorchBackend
from pneumodet.inference import tta_candidates
from pneumodet.metrics import roc_auc
from pneumodet.model import CLASS_NAMES, build_model, head_parameters
from pneumodet.postprocess import PostProcess
from pneumodet.runs import LOSS_NAMES
from pneumodet.settings import InferenceSettings
from pneumodet.tuning import COARSE, FULL, ValSet, tune


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
        # the candidates evaluate and predict would see: the same forward pass and settings (TTA, refinement,
        # voting); channels-last stays off: it would change the memory layout of the weights being trained
        found = tta_candidates(TorchBackend(self.model), images, self.config.data.image_size,
                               InferenceSettings.from_config(self.config.predict))
        for target, candidates in zip(targets, found, strict=True):
            self._val_outputs.append((int(target["image_id"]), candidates))

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
        val_set = self._labelled(outputs)
        # tuned by evaluate's own search: the thresholds on a coarse grid between epochs, everything on the last, so
        # the run's last val figure is what evaluate reports for the same weights
        last = self.trainer.max_epochs is not None and self.current_epoch >= self.trainer.max_epochs - 1
        tuned, score = tune(val_set, PostProcess.from_config(self.config.predict), FULL if last else COARSE) \
            if outputs else (PostProcess.from_config(self.config.predict), 0.0)
        threshold = tuned.score_threshold
        val = self._reduced("val")
        row = self.epoch_row()
        row.update({f"val_{k}": val[k] for k in LOSS_NAMES})
        gate_auc = roc_auc(val_set.labels, [c.gate for c in val_set.raw]) if val_set.has_gate else math.nan
        row.update({"val_rsna_map": score, "val_threshold": threshold, "val_gate_auc": gate_auc})
        self.history_row = row
        self.log("val/rsna_map", float(score), prog_bar=True)
        self.log("val/loss", float(val["loss"]) if not math.isnan(val["loss"]) else np.inf)

    def _labelled(self, outputs: list) -> ValSet:
        """Return the val images' candidates (``outputs``: (cache row, candidates in cache pixels)) as evaluate
        collects them: in the val set's order, boxes in each image's own pixels, truth from the cache's table."""
        dataset = self.trainer.datamodule.val_set
        dataset = getattr(dataset, "dataset", dataset)  # a Subset (data.val_limit) of the val images
        index_of = {int(row): i for i, row in enumerate(dataset.records["row"])}
        size = self.config.data.image_size
        ids, views, truths, raw = [], [], [], []
        for row, found in sorted(outputs, key=lambda o: index_of[o[0]]):
            i = index_of[row]
            record = dataset.records.iloc[i]
            height, width = int(record["original_height"]), int(record["original_width"])
            ids.append(str(record["patient_id"]))
            views.append(record["view"] if isinstance(record["view"], str) else "unknown")
            truths.append(xywh_to_xyxy(dataset.boxes_orig_xywh(i)))
            raw.append(found.to_original(size, (height, width)))
        return ValSet(ids, views, truths, raw)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["pneumodet"] = {
            "config": self.config.to_dict(),
            "class_names": list(CLASS_NAMES),
            "version": __version__,
            "cache": self.cache,
            "epoch": self.current_epoch + 1,
            "metrics": {k: float(v) for k, v in self.history_row.items()},
        }
