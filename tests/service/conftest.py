import json
import shutil

import pytest


@pytest.fixture
def run_with_boxes(trained_run, tmp_path):
    """The shared tiny run, copied, with every candidate box kept (it is barely trained: its tuned threshold
    keeps none, and a review of boxes needs some)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["postprocess"].update(score_threshold=0.0, gate_threshold=0.0, max_boxes=3)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run
