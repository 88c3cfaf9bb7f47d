"""The prepared GPU check runs, at toy sizes on the CPU, exactly as it runs on a GPU: it cannot rot unseen."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_at_toy_sizes_and_writes_its_few_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--toy"], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"step.json", "pipeline.json", "pipeline.log", "loader.json", "summary.json",
                                "env.txt"} <= set(files)
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert list(pipeline["stages"]) == ["synth", "prepare", "train", "evaluate", "predict"]
    assert all(stage["exit"] == 0 and stage["seconds"] > 0 for stage in pipeline["stages"].values())
    assert pipeline["predict_images_per_s_reported"] > 0 and 0 <= pipeline["data_wait_share"] < 1
    step = json.loads((out / "step.json").read_text())
    rows = {row["model"]: row for row in step["training"]}
    assert rows["stock torchvision maskrcnn_resnet50_fpn_v2"]["vs_stock"] == 1.0
    assert rows["pneumodet rsna.yaml"]["images_per_s"] > 0 and step["inference"]["latency_ms_one_image"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [] and summary["schedule_hours_five_folds"] == pytest.approx(
        5 * summary["schedule_hours_one_run"], rel=0.01)
    assert summary["loader_workers_needed"] >= 1
    assert not list(tmp_path.glob("pneumodet-gpu-check-*"))  # its work folder is removed
