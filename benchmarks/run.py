"""``make bench``: print every benchmark as a markdown table (copy the figures into BENCHMARKS.md).

Usage: python benchmarks/run.py [data] [train] [predict] [engine] [loader] [accuracy] [variants] [heldout] [folds] [distil] [defaults] — default: the first
five; accuracy, variants, heldout, folds, distil and defaults train for a long time (minutes per setting): ask for them by name.
"""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SUITES = ["data", "train", "predict", "engine", "loader"]  # "accuracy", "variants", "heldout", "folds", "distil", "defaults": slow, by name


def main(argv: list[str]) -> int:
    import torch

    chosen = argv or SUITES
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}\n")
    print("| benchmark | figure |\n| --- | --- |")
    for name in chosen:
        try:
            module = importlib.import_module(f"bench_{name}")
        except ModuleNotFoundError:
            continue
        for what, figure in module.run():
            print(f"| {what} | {figure} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
