"""Decompression bombs and oversized files: refused from the header, quickly, in little memory; real-sized
radiographs still read. Memory is each read's peak RSS, measured in a fresh subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pneumodet.io import dicom
from pneumodet.io.dicom import DicomError, read_dicom, read_dicom_bytes
from tests.conftest import gradient
from tests.security.hostile import deflated_bomb

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
MAX_SECONDS = 2.0
MAX_PEAK_MB = 300

READ_IN_A_SUBPROCESS = """
import json, sys, time
from pneumodet.io.dicom import DicomError, read_dicom
start = time.perf_counter()
try:
    image = read_dicom(sys.argv[1])
    outcome = {"shape": list(image.pixels.shape), "mean": float(image.pixels.mean())}
except DicomError as exc:
    outcome = {"error": str(exc)}
outcome["seconds"] = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would carry the forking parent's)
status = open("/proc/self/status").read()
outcome["peak_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps(outcome))
"""


def read_measured(path) -> dict:
    """Return what read_dicom made of ``path`` in a new Python process, with its time and peak RSS."""
    done = subprocess.run([sys.executable, "-c", READ_IN_A_SUBPROCESS, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("side", [8192, 16384])
def test_a_deflated_bomb_is_refused_from_its_header(tmp_path, side):
    bomb = deflated_bomb(tmp_path / "bomb.dcm", side, side)
    assert bomb.stat().st_size < 600_000  # 131 KB and 522 KB: what expands to 128 MB and 512 MB
    seen = read_measured(bomb)
    assert f"{side} x {side} pixels" in seen["error"] and "\n" not in seen["error"]
    assert seen["seconds"] < MAX_SECONDS and seen["peak_mb"] < MAX_PEAK_MB


def test_a_deflated_header_that_lies_stops_inflating_at_what_it_claims(tmp_path):
    # a 512 x 512 image, then 512 MB of trailing padding in the same deflate stream
    bomb = deflated_bomb(tmp_path / "lie.dcm", 512, 512, trailing_bytes=512 * 2**20)
    seen = read_measured(bomb)
    assert "expands beyond" in seen["error"]
    assert seen["seconds"] < MAX_SECONDS and seen["peak_mb"] < MAX_PEAK_MB


def test_a_bomb_whose_header_hides_past_the_first_megabyte_is_still_refused_early(tmp_path):
    bomb = deflated_bomb(tmp_path / "padded.dcm", 8192, 8192, padding=3 * 2**20)
    seen = read_measured(bomb)
    assert "8192 x 8192 pixels" in seen["error"]
    assert seen["seconds"] < MAX_SECONDS and seen["peak_mb"] < MAX_PEAK_MB


def test_a_header_that_never_reaches_the_pixel_data_is_refused(tmp_path):
    bomb = deflated_bomb(tmp_path / "endless.dcm", 512, 512, padding=40 * 2**20)
    seen = read_measured(bomb)
    assert "no pixel data in the first 16 MB" in seen["error"] and seen["peak_mb"] < MAX_PEAK_MB


@pytest.mark.parametrize("syntax", [DEFLATED, EXPLICIT_LE])
def test_a_real_sized_16_bit_radiograph_reads_within_the_budget(make_dicom, syntax):
    side = 4300  # the largest detectors: 43 cm at 0.1 mm
    ramp = (np.arange(side, dtype=np.uint32)[None, :] * 4088 // (side - 1)).astype(np.uint16)  # + 0..6: within 12 bits
    pixels = np.broadcast_to(ramp, (side, side)) + (np.arange(side, dtype=np.uint16)[:, None] % 7)
    path = make_dicom("large", pixels.astype(np.uint16), transfer_syntax=syntax, photometric="MONOCHROME1",
                      tags={"BitsStored": 12, "HighBit": 11, "WindowCenter": 2048, "WindowWidth": 4096})
    seen = read_measured(path)
    assert seen["shape"] == [side, side] and seen["peak_mb"] < MAX_PEAK_MB and seen["seconds"] < 5
    image = read_dicom(path)
    expected = 255 - np.round(np.clip((pixels - 2047.5) / 4095 + 0.5, 0, 1) * 255)  # window, then MONOCHROME1
    assert np.abs(image.pixels.astype(int) - expected).max() <= 1  # float32 against float64 rounding


@pytest.mark.parametrize("tags", [{}, {"WindowCenter": 600, "WindowWidth": 900},
                                  {"RescaleSlope": -2, "RescaleIntercept": 3000}])
def test_conversion_block_by_block_equals_one_block(make_dicom, monkeypatch, tags):
    rng = np.random.default_rng(4)
    path = make_dicom("raw", rng.integers(0, 4096, (37, 53)).astype(np.uint16), transfer_syntax=EXPLICIT_LE,
                      tags={"BitsStored": 12, "HighBit": 11, **tags})
    whole = read_dicom(path).pixels
    monkeypatch.setattr(dicom, "BLOCK_PIXELS", 100)  # one or two rows at a time
    assert np.array_equal(read_dicom(path).pixels, whole) and whole.std() > 10


def test_a_jpeg_claiming_too_many_pixels_is_refused_before_decoding(make_dicom):
    path = make_dicom("wide", gradient(64, 64), tags={"Rows": 6000, "Columns": 6000})
    with pytest.raises(DicomError, match="6000 x 6000 pixels: more than the 25 M"):
        read_dicom(path)


def test_native_frames_beyond_the_byte_budget_are_refused(make_dicom):
    path = make_dicom("frames", gradient(64, 64), transfer_syntax=EXPLICIT_LE,
                      tags={"Rows": 4000, "Columns": 4000, "NumberOfFrames": 9})
    with pytest.raises(DicomError, match=r"pixel data of 137 MB \(9 frame\(s\) of 4000 x 4000"):
        read_dicom(path)


def test_a_file_larger_than_any_radiograph_is_not_read(make_dicom, monkeypatch):
    path = make_dicom("plain", gradient(64, 64), transfer_syntax=EXPLICIT_LE)
    monkeypatch.setattr(dicom, "MAX_FILE_BYTES", 4096)
    with pytest.raises(DicomError, match="larger than the 0 MB the largest radiograph needs"):
        read_dicom(path)
    with pytest.raises(DicomError, match="larger than"):
        read_dicom_bytes(path.read_bytes(), "upload.dcm")


def test_deflated_mutants_raise_only_dicom_error(make_dicom):
    source = make_dicom("deflated", gradient(48, 40), transfer_syntax=DEFLATED).read_bytes()
    assert read_dicom_bytes(source, "d.dcm").pixels.shape == (48, 40)
    rng = np.random.default_rng(35)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        data = bytearray(source)
        if i % 3 == 0:
            data = data[: int(rng.integers(140, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(132, len(data)))] = int(rng.integers(0, 256))
        try:
            read_dicom_bytes(bytes(data), f"m{i}.dcm")
            outcomes["ok"] += 1
        except DicomError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100
