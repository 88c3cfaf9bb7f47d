"""Seeded byte-flip mutants of small DICOMs: read_dicom raises DicomError and nothing else, quickly."""

import time

import numpy as np
import pytest

from pneumodet.io.dicom import DicomError, read_dicom, read_dicom_bytes
from tests.conftest import gradient

EXPLICIT_LE = "1.2.840.10008.1.2.1"
MUTANTS_PER_SOURCE = 350
MAX_READ_S = 2.0


def _sources(make_dicom) -> list[bytes]:
    noisy = (gradient(96, 128).astype(np.int16) + np.random.default_rng(0).integers(-20, 20, (96, 128))).clip(0, 255)
    return [
        make_dicom("jpeg", noisy.astype(np.uint8), tags={"ViewPosition": "PA", "PatientAge": "51",
                                                         "PatientSex": "F", "PixelSpacing": [0.14, 0.14]}).read_bytes(),
        make_dicom("raw12", (noisy.astype(np.uint16) * 16), transfer_syntax=EXPLICIT_LE, photometric="MONOCHROME1",
                   tags={"BitsStored": 12, "HighBit": 11, "WindowCenter": 2000, "WindowWidth": 3000,
                         "RescaleSlope": 1, "RescaleIntercept": 0}).read_bytes(),
        make_dicom("raw8", noisy.astype(np.uint8), transfer_syntax=EXPLICIT_LE).read_bytes(),
    ]


def _pixel_offset(blob: bytes) -> int:
    """Return where the PixelData element starts (tag 7FE0,0010, little endian)."""
    return blob.index(b"\xe0\x7f\x10\x00")


def _mutants(blob: bytes, rng: np.random.Generator, n: int):
    """Yield (kind, bytes): byte flips in the header, in the pixel data, truncations and splices."""
    header_end = _pixel_offset(blob) + 12
    for i in range(n):
        data = bytearray(blob)
        kind = ("header", "body", "truncate", "header")[i % 4]
        if kind == "truncate":
            data = data[: int(rng.integers(1, len(data)))]
        else:
            low, high = (132, header_end) if kind == "header" else (header_end, len(data))
            for _ in range(int(rng.integers(1, 4))):
                position = int(rng.integers(low, high))
                data[position] = int(rng.integers(0, 256)) if rng.random() < 0.7 else data[position] ^ 0xFF
        yield kind, bytes(data)


def test_mutants_raise_only_dicom_error(make_dicom, tmp_path):
    rng = np.random.default_rng(2026)
    counts = {"ok": 0, "DicomError": 0}
    slowest = 0.0
    reads = 0
    for source in _sources(make_dicom):
        for index, (kind, data) in enumerate(_mutants(source, rng, MUTANTS_PER_SOURCE)):
            for max_decode in (None, 32):
                start = time.perf_counter()
                try:
                    if index % 2:
                        read_dicom_bytes(data, f"m{index}.dcm", max_decode_size=max_decode)
                    else:
                        path = tmp_path / f"m{index}.dcm"
                        path.write_bytes(data)
                        read_dicom(path, max_decode_size=max_decode)
                    counts["ok"] += 1
                except DicomError as exc:
                    counts["DicomError"] += 1
                    assert "\n" not in str(exc) and " object at 0x" not in str(exc), str(exc)
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    pytest.fail(f"{kind} mutant {index} (max_decode {max_decode}) raised {type(exc).__name__}: {exc}")
                slowest = max(slowest, time.perf_counter() - start)
                reads += 1
    assert reads >= 2000
    assert counts["DicomError"] > 200 and counts["ok"] > 200  # both outcomes really happen
    assert slowest < MAX_READ_S


def test_header_size_must_match_the_jpeg_stream(make_dicom):
    path = make_dicom("liar", gradient(64, 64), tags={"Rows": 128, "Columns": 128})
    for max_decode in (None, 32):
        with pytest.raises(DicomError, match="JPEG stream is 64 x 64 but Rows x Columns say 128 x 128"):
            read_dicom(path, max_decode_size=max_decode)


def test_truncated_pixel_data_is_named(make_dicom):
    for syntax in (EXPLICIT_LE, "1.2.840.10008.1.2.4.50"):
        data = make_dicom("cut", gradient(128, 128), transfer_syntax=syntax).read_bytes()
        with pytest.raises(DicomError, match="truncated"):
            read_dicom_bytes(data[: len(data) - 300], "cut.dcm")


def test_bytes_errors_name_the_upload_not_a_buffer():
    with pytest.raises(DicomError) as info:
        read_dicom_bytes(b"DICM" * 40, "upload.dcm")
    assert str(info.value).startswith("upload.dcm: ") and "0x" not in str(info.value)


def test_non_finite_window_falls_back_to_min_max(make_dicom):
    raw = np.array([[100, 600, 1100]], dtype=np.uint16).repeat(3, axis=0)
    path = make_dicom("nan", raw, transfer_syntax=EXPLICIT_LE,
                      tags={"BitsStored": 12, "HighBit": 11, "WindowCenter": "NaN", "WindowWidth": "inf"})
    assert read_dicom(path).pixels[0].tolist() == [0, 128, 255]
