"""One model as good as the ensemble: single run, K-fold ensemble and the student distilled from it, per variant.

For each of ``synth.HELD_OUT`` (``DISTIL_VARIANTS``, names separated by spaces, runs others instead): the README
flow of ``bench_heldout`` (the single run); ``train --folds K`` (``DISTIL_FOLDS``, default 3) on the same 240
labelled images, ``evaluate`` (tuned out of fold) and ``predict`` the 300 test images with the ensemble; ``distil``
the ensemble's sure answers on those test images (unlabelled: their truth is only used by ``score``) into the
student's cache; ``train --config demo`` the student on it, ``evaluate`` on the labelled val, ``predict`` and
``score``. Each row gives the three test RSNA mAPs with their intervals and the paired differences (``score
--against``). About 4 + K trainings of 12-15 minutes per variant on 2 cores: ``python benchmarks/run.py distil``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench_heldout import flow
from bench_variants import _cli, _data

from pneumodet.data.synth import HELD_OUT


def _score(submission: Path, data: Path, against: Path) -> dict:
    return json.loads(_cli("score", str(submission), "--labels", str(data / "synthetic_test_labels.csv"),
                           "--against", str(against)))


def variant_rows(root: Path, variant: str, k: int) -> list[tuple[str, str]]:
    data, cache = _data(root, variant, "configs/demo.yaml", folds=k)
    flow(root, variant, [])
    single = root / f"run-{variant}" / "test.csv"
    folds, student_cache, student = root / f"folds-{variant}", root / f"cache-{variant}-student", root / f"student-{variant}"
    _cli("train", "--config", "demo", "--data", str(cache), "--folds", str(k), "--run", str(folds))
    _cli("evaluate", str(folds))
    _cli("predict", str(folds), str(data / "stage_2_test_images"), "--out", str(folds / "test.csv"))
    said = _cli("distil", str(folds), str(data / "stage_2_test_images"), "--data", str(cache), "--out",
                str(student_cache))
    _cli("train", "--config", "demo", "--data", str(student_cache), "--run", str(student))
    _cli("evaluate", str(student))
    _cli("predict", str(student), str(data / "stage_2_test_images"), "--out", str(student / "test.csv"))
    ensemble, distilled = _score(folds / "test.csv", data, single), _score(student / "test.csv", data, single)
    against_ensemble = _score(student / "test.csv", data, folds / "test.csv")["against"]

    def ci(low_high) -> str:
        return "no interval" if low_high is None else f"{low_high[0]:.3f}-{low_high[1]:.3f}"

    single_score = ensemble["against"]
    return [
        (f"{variant}: single / {k}-fold ensemble / distilled, test RSNA mAP",
         f"{single_score['rsna_map']:.3f} ({ci(single_score['rsna_map_ci'])}) / {ensemble['rsna_map']:.3f} "
         f"({ci(ensemble['rsna_map_ci'])}) / {distilled['rsna_map']:.3f} ({ci(distilled['rsna_map_ci'])})"),
        (f"{variant}: paired differences",
         f"ensemble - single {ensemble['against']['difference']:+.3f} ({ci(ensemble['against']['difference_ci'])}); "
         f"distilled - single {distilled['against']['difference']:+.3f} "
         f"({ci(distilled['against']['difference_ci'])}); distilled - ensemble "
         f"{against_ensemble['difference']:+.3f} ({ci(against_ensemble['difference_ci'])})"),
        (f"{variant}: distil", said.splitlines()[0]),
    ]


def run() -> list[tuple[str, str]]:
    k = int(os.environ.get("DISTIL_FOLDS", "3"))
    variants = os.environ.get("DISTIL_VARIANTS", "").split() or HELD_OUT
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            rows += variant_rows(Path(tmp), variant, k)
    return rows
