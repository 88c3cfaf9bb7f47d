"""Callbacks: metrics.csv and the plots drawn from it, and atomic checkpoint files."""

from __future__ import annotations

import math
import time

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumodet.checkpoints import atomic_save
from pneumodet.runs import RunPaths, read_metrics, write_metrics
from pneumodet.training.loggers import log_epoch


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, but through a temporary file and a rename."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_save(checkpoint, path)


class MetricsHistory(L.Callback):
    """One metrics.csv row per epoch (rank 0), written before the epoch's checkpoint (val columns NaN on epochs
    ``train.val_every_steps`` does not validate); plots redrawn at most every
    ``plot_every_s`` seconds and after the last epoch (drawing them costs ~1 s, and small sets run 50+ epochs)."""

    def __init__(self, paths: RunPaths, plot_every_s: float = 30.0):
        self.paths, self.plot_every_s = paths, plot_every_s
        self._plotted_at = -math.inf

    def _plot(self) -> None:
        from pneumodet.report.plots import plot_history

        plot_history(self.paths.metrics_csv, self.paths.plots)
        self._plotted_at = time.monotonic()

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.paths.metrics_csv.is_file():
            self._plot()

    def on_validation_end(self, trainer, pl_module):
        # after the module's on_validation_epoch_end (which fills history_row), before ModelCheckpoint
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.history_row:
            return
        self._write(trainer, pl_module.history_row)

    def on_train_epoch_end(self, trainer, pl_module):
        # after validation, when the epoch had one (train.val_every_steps): otherwise its row has no val columns.
        # A run resumed from a checkpoint taken at validation ends that epoch again without training a batch:
        # its row is already written
        if pl_module.history_row.get("epoch") == trainer.current_epoch + 1 or not pl_module.epoch_batches:
            return
        row = pl_module.epoch_row()  # on every process: it sums the losses over them
        if trainer.is_global_zero:
            self._write(trainer, row)

    def _write(self, trainer, row: dict) -> None:
        rows = [r for r in read_metrics(self.paths.metrics_csv) if r["epoch"] < row["epoch"]]
        write_metrics(self.paths.metrics_csv, rows + [row])
        log_epoch(trainer.loggers, row, trainer.global_step)  # TensorBoard / MLflow, if chosen
        if time.monotonic() - self._plotted_at >= self.plot_every_s:
            self._plot()


class ValidateLastEpoch(L.Callback):
    """Validate the last epoch too when ``check_val_every_n_epoch`` does not divide the epochs: otherwise the run
    would end without its final metrics.csv row and last.ckpt (ModelCheckpoint saves after validation)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.check_val_every_n_epoch = 1
