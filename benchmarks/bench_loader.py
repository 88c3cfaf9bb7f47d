"""What the CPU side feeds a GPU: rsna.yaml's training loader at 512 px per worker count, and one DICOM's decode
for predict at 512 px (``python benchmarks/run.py loader``)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_check import Clock, loader_benchmark


def run() -> list[tuple[str, str]]:
    from pneumodet.data.cache import read_for_cache
    from pneumodet.io.layout import image_files

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cli = [sys.executable, "-m", "pneumodet.cli"]
        subprocess.run([*cli, "synth", str(tmp / "data"), "--train", "160", "--test", "100"], check=True,
                       capture_output=True)
        subprocess.run([*cli, "prepare", str(tmp / "data"), "--out", str(tmp / "cache"), "--size", "512"], check=True,
                       capture_output=True)
        sizes = dict(size=512, batch=16, loader_batches=24, workers=(0, 1, 2))
        for row in loader_benchmark(sizes, tmp / "cache", Clock(1000)):
            rows.append((f"training loader, rsna.yaml augmentation, 512 px, batch 16, {row['workers']} workers",
                         f"{row['images_per_s']} images/s"))
        files = image_files(tmp / "data" / "stage_2_test_images")[0]
        for path in files[:5]:
            read_for_cache(path, 512)
        start = time.perf_counter()
        for path in files:
            read_for_cache(path, 512)
        rows.append(("predict's decode of one 1024² JPEG DICOM to 512 px (one core)",
                     f"{1000 * (time.perf_counter() - start) / len(files):.2f} ms"))
    return rows
