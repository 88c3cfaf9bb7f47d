"""The ``pneumodet`` command. Each subcommand imports what it needs, so ``--help`` and errors are fast.

Exit codes: 0 success, 2 user error (one line on stderr), 1 unexpected failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pneumodet import __version__
from pneumodet.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def cmd_synth(args) -> None:
    from pneumodet.data.synth import synthesize

    start = time.perf_counter()
    cases = synthesize(args.out, args.train, args.test, args.seed, workers=args.workers)
    elapsed = time.perf_counter() - start
    positives = sum(c.annotation.positive for c in cases["train"])
    n = len(cases["train"]) + len(cases["test"])
    print(f"wrote {len(cases['train'])} train ({positives} positive) and {len(cases['test'])} test images "
          f"to {args.out} in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.0f} images/s)")


def cmd_download(args) -> None:
    from pneumodet.io.kaggle import check_complete, download_competition

    if not check_complete(args.out):
        print(f"{args.out}: already complete, nothing to download")
        return
    download_competition(args.out)
    print(f"downloaded the competition to {args.out}")


def cmd_prepare(args) -> None:
    from pneumodet.data.prepare import prepare

    start = time.perf_counter()
    result = prepare(args.data, args.out, size_px=args.size, val_fraction=args.val_fraction, seed=args.seed,
                     groups_csv=args.groups, subset=args.subset, workers=args.workers)
    summary = result.summary
    state = "reused" if result.reused else f"built in {time.perf_counter() - start:.1f} s"
    problems = sum(summary["problems"].values())
    print(f"{summary['usable']}/{summary['images']} images usable, {summary['positives']} positive, "
          f"{summary['boxes']} boxes; {problems} problem(s) in {result.qc_csv}")
    print(f"cache {state}: {result.cache_dir}")
    if result.split_csv:
        print(f"split: {result.split_csv}")


def cmd_demo(args) -> None:
    from pneumodet.data.prepare import prepare
    from pneumodet.data.synth import synthesize

    out = Path(args.out)
    data, cache = out / "data", out / "cache"
    print(f"[1/2] synth: {args.train} train + {args.test} test images -> {data}")
    synthesize(data, args.train, args.test, seed=0)
    print(f"[2/2] prepare: quality control, {args.size}px cache and split -> {cache}")
    result = prepare(data, cache, size_px=args.size)
    print(json.dumps(result.summary["problems"]) if result.summary["problems"] else "no QC problems")
    print(f"done. data: {data}  cache: {result.cache_dir}  QC: {result.qc_csv}  split: {result.split_csv}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumodet", description="Find pneumonia on chest radiographs "
                                     "(RSNA Pneumonia Detection Challenge) with Mask R-CNN.")
    parser.add_argument("--version", action="version", version=f"pneumodet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic data set in the Kaggle RSNA layout",
                       description="Write a synthetic data set in exactly the Kaggle layout: both label CSVs, "
                       "a sample submission, 1024x1024 JPEG Baseline DICOMs, and synthetic_test_labels.csv "
                       "(the test truth, for pneumodet score).")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--train", type=_positive_int, default=200, help="number of training images (default 200)")
    p.add_argument("--test", type=_positive_int, default=50, help="number of test images (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download the competition data with the Kaggle API",
                       description="Download rsna-pneumonia-detection-challenge with the Kaggle API, unzip it "
                       "and check the files; a complete folder is left alone. Needs ~/.kaggle/kaggle.json "
                       "(or KAGGLE_USERNAME and KAGGLE_KEY) and the competition rules accepted.")
    p.add_argument("out", type=Path, help="destination folder")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="quality-control, cache and split a data set",
                       description="Check every file and label row (CACHE/qc.csv, CACHE/qc.json), build the "
                       "resized uint8 cache (reused when its parameters and sources are unchanged) and "
                       "write the train/val split (CACHE/split.csv).")
    p.add_argument("data", type=Path, help="folder in the Kaggle layout (stage_2_train_labels.csv, "
                   "stage_2_train_images/, ...)")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument("--size", type=_positive_int, default=256, help="cached image size in pixels (default 256)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of images for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--groups", type=Path, default=None, help="CSV patientId,group: images of one group "
                   "(e.g. one person) stay in one split")
    p.add_argument("--subset", choices=["train", "test"], default="train",
                   help="train (labelled, split) or test (stage_2_test_images, no labels)")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data",
                       description="Run the pipeline end to end on synthetic data and print where each result is.")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default ./demo)")
    p.add_argument("--train", type=_positive_int, default=600, help="synthetic training images (default 600)")
    p.add_argument("--test", type=_positive_int, default=50, help="synthetic test images (default 50)")
    p.add_argument("--size", type=_positive_int, default=256, help="image size in pixels (default 256)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"pneumodet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pneumodet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
