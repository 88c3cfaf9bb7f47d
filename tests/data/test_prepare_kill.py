"""A prepare killed with SIGKILL mid-way leaves no process behind, and the next prepare cleans up and rebuilds."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumodet.data.cache import open_cache
from pneumodet.data.prepare import prepare
from pneumodet.io.layout import TRAIN_IMAGES, TRAIN_LABELS

COPIES = 60  # 30 synthetic images x 60 links: long enough at 512 px to be killed half-way


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def many_images(synth_data, tmp_path):
    data = tmp_path / "data"
    (data / TRAIN_IMAGES).mkdir(parents=True)
    labels = (synth_data / TRAIN_LABELS).read_text().splitlines()
    rows = [labels[0]]
    for source in sorted((synth_data / TRAIN_IMAGES).glob("*.dcm")):
        own = [line for line in labels[1:] if line.split(",", 1)[0] == source.stem]
        for n in range(COPIES):
            (data / TRAIN_IMAGES / f"{source.stem}-{n}.dcm").symlink_to(source)
            rows += [f"{source.stem}-{n}," + line.split(",", 1)[1] for line in own]
    (data / TRAIN_LABELS).write_text("\n".join(rows) + "\n")
    return data


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_sigkill_leaves_no_orphans_and_the_next_run_rebuilds(many_images, tmp_path):
    out = tmp_path / "cache"
    parent = subprocess.Popen([sys.executable, "-m", "pneumodet.cli", "prepare", str(many_images), "--out", str(out),
                               "--size", "512", "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and parent.poll() is None:
        workers = _children(parent.pid)
        building = list(out.glob(".tmp-train-512px-*")) if out.is_dir() else []
        if len(workers) >= 2 and building and (building[0] / "images.npy").exists():
            break
        time.sleep(0.05)
    assert parent.poll() is None and len(workers) >= 2, "prepare finished before it could be killed"
    time.sleep(0.5)  # mid-way through the images
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their killed parent"
    left = sorted(p.name for p in out.iterdir())
    assert left and all(name.startswith(".tmp-train-512px-") for name in left)  # nothing that looks complete

    result = prepare(many_images, out, size_px=512, progress=False, workers=2)
    assert not result.reused and len(open_cache(out, 512).images) == 30 * COPIES
    assert not list(out.glob(".tmp-*")), "the dead run's temporary folder was not removed"
    assert os.path.islink(out / "train-512px")
