"""``python benchmarks/run.py folds``: train --folds 3, out-of-fold tuning and the ensemble (see bench_variants)."""

from bench_variants import run_folds as run  # noqa: F401
