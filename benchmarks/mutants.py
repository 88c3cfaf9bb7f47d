"""Break the code on purpose, one change at a time, and check that a test goes red: ``make mutants``.

Each mutant is one edit that a plausible bug would make (a comparison turned, two scales swapped, a rule
dropped) and the tests that must catch it. The source is edited in place and always restored; the run exits
non-zero if any mutant survives its tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pneumodet"

#: (what the bug is, file, text, its mutation, tests that must fail)
MUTANTS = [
    ("tuning takes the last of tied settings", "tuning.py",
     "                if candidate_score > best_score + 1e-9:\n                    best, best_score = candidate, "
     "candidate_score\n    return best, best_score",
     "                if candidate_score >= best_score - 1e-9:\n                    best, best_score = candidate, "
     "candidate_score\n    return best, best_score", "tests/test_tuning.py"),
    ("an image at the threshold is not called", "assess.py", "c = _counts(labels, scores >= threshold)",
     "c = _counts(labels, scores > threshold)", "tests/test_assess.py"),
    ("a group's class is taken from any image", "data/split.py",
     'frame.sort_values(["group", "label_class", "view"])', 'frame.sort_values(["group", "view"])',
     "tests/data/test_split.py"),
    ("the VOI window without DICOM's half-pixel terms", "io/dicom.py",
     "            values -= centre - 0.5\n            values /= width - 1",
     "            values -= centre\n            values /= width", "tests/io/test_dicom.py"),
    ("review_detail with x and y scales swapped", "service/review.py",
     "round(cache_shape[0] / item.scale[1]), round(cache_shape[1] / item.scale[0])",
     "round(cache_shape[0] / item.scale[0]), round(cache_shape[1] / item.scale[1])",
     "tests/service/test_review.py"),
    ("the review list best first", "service/review.py",
     "items.sort(key=lambda it: (it.score is None, it.score if it.score is not None else 0.0, it.patient_id))",
     "items.sort(key=lambda it: (it.score is None, -(it.score or 0.0), it.patient_id))",
     "tests/service/test_review.py tests/service/test_api.py"),
    ("cache boxes mapped back with x and y swapped", "boxes.py",
     "scale_boxes(boxes_cache_xyxy, width / cache_px, height / cache_px)",
     "scale_boxes(boxes_cache_xyxy, height / cache_px, width / cache_px)",
     "tests/test_inference.py tests/test_detector.py"),
    ("truth boxes put in the cache with x and y swapped", "boxes.py",
     "scale_boxes(boxes_orig_xyxy, cache_px / width, cache_px / height)",
     "scale_boxes(boxes_orig_xyxy, cache_px / height, cache_px / width)", "tests/data/test_prepare.py"),
    ("a setting applied by changing the shared model", "forward.py",
     "        heads = self.model.roi_heads\n        class_logits, box_regression = self.box_head("
     "heads.box_roi_pool(features, proposals, image_sizes))\n        if box_vote:",
     "        heads = self.model.roi_heads\n        if box_vote:\n            heads.detections_per_img = 3\n"
     "        class_logits, box_regression = self.box_head(heads.box_roi_pool(features, proposals, image_sizes))\n"
     "        if box_vote:", "tests/test_forward.py"),
]


def run_tests(targets: str) -> bool:
    """Return whether the tests pass."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *targets.split()]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True).returncode == 0


def main() -> int:
    survivors = []
    for what, name, text, mutation, targets in MUTANTS:
        path = SRC / name
        original = path.read_text()
        if original.count(text) != 1:
            print(f"stale mutant: {what}: its text is not in {name} exactly once", file=sys.stderr)
            return 2
        try:
            path.write_text(original.replace(text, mutation))
            caught = not run_tests(targets)
        finally:
            path.write_text(original)
        print(f"{'caught ' if caught else 'SURVIVED'}  {what}  ({targets})", flush=True)
        if not caught:
            survivors.append(what)
    if survivors:
        print(f"{len(survivors)} of {len(MUTANTS)} mutants survived their tests", file=sys.stderr)
        return 1
    print(f"all {len(MUTANTS)} mutants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
