"""``train.loggers``: experiment logs beside metrics.csv, through Lightning's loggers.

``csv`` is metrics.csv, always written: the plots, ``evaluate`` and the review page read it. ``tensorboard``
writes event files to ``RUN/tensorboard`` (``tensorboard --logdir runs``); ``mlflow`` logs to the server named
by ``MLFLOW_TRACKING_URI``, else to ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns``). Both get
the resolved configuration as parameters, Lightning's step-wise training loss, and every metrics.csv column
once per epoch as ``csv/COLUMN`` (every loss component for train and val, val RSNA mAP, lr), at the epoch's
last optimizer step.
"""

from __future__ import annotations

import importlib.util
import math
import os

from pneumodet.config import RunConfig
from pneumodet.errors import UserError
from pneumodet.files import write_text_atomic
from pneumodet.network import can_reach
from pneumodet.runs import RunPaths

#: logger name -> (the module it needs, the pneumodet extra that installs it); config.LOGGERS adds csv
OPTIONAL = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
MLFLOW_RUN_ID = "mlflow_run_id"


def check_loggers(names: tuple[str, ...]) -> None:
    """Raise a one-line UserError if a chosen logger's package is not installed or its server does not answer."""
    for name in names:
        if name in OPTIONAL:
            module, extra = OPTIONAL[name]
            if importlib.util.find_spec(module) is None:
                raise UserError(f"train.loggers: {name} needs the {extra} extra: pip install 'pneumodet[{extra}]'")
    if "mlflow" in names and os.environ.get("MLFLOW_TRACKING_URI"):
        check_server(os.environ["MLFLOW_TRACKING_URI"])


def check_server(uri: str) -> None:
    """Raise a one-line UserError within a second if an http(s) tracking server cannot be reached (MLflow itself
    retries for minutes before it gives up)."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https") and parsed.hostname:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if not can_reach(parsed.hostname, port):
            raise UserError(f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers there; start it, or unset "
                            "MLFLOW_TRACKING_URI to log into the run folder (RUN/mlruns)")


def build_loggers(config: RunConfig, paths: RunPaths) -> list:
    """Return Lightning loggers for ``config.train.loggers`` (csv is not one: MetricsHistory writes it); call
    :func:`check_loggers` first (train does, before the run folder exists)."""
    names = config.train.loggers
    loggers = []
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(paths.root), name="tensorboard", version="",
                                         default_hp_metric=False))
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (paths.root / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its folder store only on request; a run folder wants no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        saved = paths.root / MLFLOW_RUN_ID
        run_id = saved.read_text().strip() if saved.is_file() else None  # a resumed run goes on in the same MLflow run
        loggers.append(MLFlowLogger(experiment_name=config.name, run_name=paths.root.name, tracking_uri=uri,
                                    run_id=run_id))
    return loggers


def start_loggers(loggers: list, config: RunConfig, paths: RunPaths, resume: bool = False) -> None:
    """Log the configuration of a new run and remember its MLflow run (rank 0, before training).

    A resumed run logs no parameters again: MLflow refuses a changed value (e.g. more epochs to go on).
    """
    for logger in loggers:
        if not resume:
            logger.log_hyperparams(config.to_dict())
        if type(logger).__name__ == "MLFlowLogger":
            write_text_atomic(paths.root / MLFLOW_RUN_ID, f"{logger.run_id}\n")


def log_epoch(loggers, row: dict, step: int) -> None:
    """Send one metrics.csv row (its finite numbers) to every logger at optimizer step ``step``."""
    values = {f"csv/{k}": float(v) for k, v in row.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    for logger in loggers:
        logger.log_metrics(values, step=step)
        logger.save()
