"""Read a chest radiograph DICOM into a uint8 image in the MONOCHROME2 convention.

JPEG Baseline (the RSNA transfer syntax) is decoded by Pillow directly from the encapsulated
frame: Pillow decodes these files ~4x faster than pylibjpeg, and it can decode at 1/2, 1/4 or
1/8 scale for free when a smaller image is all that is needed (``max_decode_size``).

Every file is untrusted: what it may cost is bounded before anything is decompressed. A file larger than
``MAX_FILE_BYTES`` is not read; Rows x Columns (and the bytes the pixel data needs) are checked against
``MAX_PIXELS`` and ``MAX_DECODED_BYTES`` from the header, before any decoder runs; a deflated dataset is inflated
in steps, its header first, and never beyond what that header says the pixels need. Decoding keeps the pixels as
a view on the pixel data where it can and converts them to uint8 a block of rows at a time, so the one full-size
array it makes is the result.
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames

from pneumodet.errors import UserError
from pneumodet.io.dicom_parse import (
    BIG_ENDIAN,
    MAX_FILE_BYTES,
    PILLOW_SYNTAXES,
    UNCOMPRESSED_SYNTAXES,
    DicomError,
    check_budget,
    describe_error,
    dimensions,
    parse_dataset,
    syntax_of,
    truncated,
)
from pneumodet.io.layout import image_files

MAX_AGE_YEARS = 120
#: rows converted to uint8 at a time (each block's float32 copy is about this many pixels)
BLOCK_PIXELS = 1 << 20


@dataclass(frozen=True)
class DicomImage:
    """One radiograph: ``pixels`` (H, W) uint8, bright = dense (MONOCHROME2)."""

    patient_id: str
    pixels: np.ndarray
    view_position: str | None
    sex: str | None
    age: int | None
    pixel_spacing: tuple[float, float] | None
    original_size: tuple[int, int]
    photometric: str
    transfer_syntax: str
    bits_stored: int
    # where the columns run in the patient (PatientOrientation's first value: "L" means the image's right side is
    # the patient's left, the usual display of a frontal radiograph); None when the file does not say
    row_direction: str | None = None


def parse_age(value) -> int | None:
    """Return an age in whole years from "51", "051Y", "6M", "3W", "2D"; None if unparsable or > 120."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", str(value).upper())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2) or "Y"
    years = {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}[unit]
    return years if 0 <= years <= MAX_AGE_YEARS else None


def _view_position(ds) -> str | None:
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if not view:
        # the RSNA files also say "view: PA" in SeriesDescription
        match = re.search(r"view:\s*(\w+)", str(ds.get("SeriesDescription", "")), re.IGNORECASE)
        view = match.group(1).upper() if match else ""
    return view or None


def _sex(ds) -> str | None:
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return sex if sex in {"M", "F", "O"} else None


def _row_direction(ds) -> str | None:
    """Return PatientOrientation's first value when it is a plain left/right direction ("L" or "R"), else None."""
    try:
        value = ds.get("PatientOrientation")
        first = (value[0] if isinstance(value, pydicom.multival.MultiValue | list | tuple) else value) if value else ""
    except (TypeError, IndexError, ValueError):
        return None
    first = str(first).strip().upper()
    return first if first in ("L", "R") else None


def _pixel_spacing(ds) -> tuple[float, float] | None:
    try:
        spacing = ds.get("PixelSpacing")
        if spacing is None or len(spacing) != 2:
            return None
        return float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError):
        return None


def _first_number(value) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, pydicom.multival.MultiValue | list | tuple):
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return number if np.isfinite(number) else None  # NaN/inf: as if absent, not a black image


def _decode_pillow(ds, rows: int, columns: int, max_decode_size: int | None, path: Path) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = next(generate_frames(ds.PixelData, number_of_frames=max(frames, 1)))
    image = Image.open(io.BytesIO(frame))
    if image.size != (columns, rows):  # the JPEG's own size, read before anything is decoded
        raise DicomError(path, f"JPEG stream is {image.size[1]} x {image.size[0]} but Rows x Columns say "
                         f"{rows} x {columns}")
    if max_decode_size:
        # DCT-domain downscaling: decodes at the smallest 1/2^k scale still >= max_decode_size
        image.draft("L", (max_decode_size, max_decode_size))
    image.load()
    if image.mode not in ("L", "I;16", "I"):
        image = image.convert("L")
    return np.asarray(image)


def _to_uint8(raw: np.ndarray, ds) -> np.ndarray:
    """Return a new (H, W) uint8 array: rescale slope and intercept -> VOI window, else the VOI LUT table, else
    min-max for > 8-bit data; 8-bit data is kept as stored.

    ``raw`` (H, W) may be a read-only view on the pixel data; it is converted a block of rows at a time, so no
    full-size float copy is ever made (a 4,300 x 4,300 image would need 74 MB for each).
    """
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    slope = _first_number(ds.get("RescaleSlope")) or 1.0
    intercept = _first_number(ds.get("RescaleIntercept")) or 0.0
    if raw.dtype == np.uint8 and bits_stored <= 8 and slope == 1.0 and intercept == 0.0:
        return np.array(raw)  # the one copy: the caller owns (and may write) what it gets
    centre = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 1:
        def scale(values):  # DICOM PS3.3 C.11.2.1.2 linear VOI function
            values -= centre - 0.5
            values /= width - 1
            values += 0.5
            return np.clip(values, 0, 1, out=values)
    elif (table := _voi_table(ds)) is not None:
        def scale(values):
            from pydicom.pixels import apply_voi

            low, high = table
            return (apply_voi(np.round(values).astype(np.int64), ds).astype(np.float32) - low) / (high - low)
    else:
        ends = np.array([raw.min(), raw.max()]).astype(np.float32) * slope + intercept  # as every value is scaled
        low, high = float(ends.min()), float(ends.max())

        def scale(values):
            if not high > low:
                return np.zeros_like(values)
            values -= low
            values /= high - low
            return values
    out = np.empty(raw.shape, dtype=np.uint8)
    step = max(1, BLOCK_PIXELS // max(raw.shape[1], 1))
    for start in range(0, raw.shape[0], step):
        values = raw[start:start + step].astype(np.float32)
        values *= slope
        values += intercept
        scaled = scale(values)
        scaled *= 255
        out[start:start + step] = np.round(scaled, out=scaled)
    return out


def _voi_table(ds) -> tuple[float, float] | None:
    """Return (low, high), the output range of the first VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1), from
    which looked-up values are scaled to 0-1; None without one, or with one that cannot be used (min-max instead).

    Digital radiographs often carry their display curve as such a table rather than as a window.
    """
    if not ds.get("VOILUTSequence"):
        return None
    from pydicom.pixels import apply_voi

    try:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        table = apply_voi(np.arange(first, first + entries), ds).astype(np.float32)  # every entry once
        low, high = float(table.min()), float(table.max())
        if not high > low:
            return None
        apply_voi(np.zeros(1, dtype=np.int64), ds)  # a table that cannot be applied fails here, not mid-image
        return low, high
    except Exception:  # a damaged or unsupported table
        return None


def folder_images(folder: str | Path, say: str | None = None) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Return :func:`~pneumodet.io.layout.image_files` of ``folder``: (image files, (file left out, file kept)).

    A UserError when the folder is missing or holds no image file. ``say``: the command that reports each file
    left out for repeating another's patientId, one stderr line each (None: silent).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: images folder not found")
    files, repeats = image_files(folder)
    if not files:
        raise UserError(f"{folder}: no .dcm files")
    for path, kept in repeats if say else []:
        print(f"pneumodet {say}: {path.name}: the same patientId as {kept.name}; left out", file=sys.stderr)
    return files, repeats


def read_dicom(path: str | Path, max_decode_size: int | None = None) -> DicomImage:
    """Return the radiograph in ``path`` as a :class:`DicomImage`; raise :class:`DicomError` if unusable.

    ``max_decode_size`` lets a JPEG be decoded at a reduced scale (never below that size); the
    returned pixels are then smaller than ``original_size``.
    """
    with warnings.catch_warnings():
        # pydicom warns on values such as PatientAge "51", which is how the real RSNA files store it
        warnings.simplefilter("ignore")
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    raise DicomError(path, f"{size / 2**20:.0f} MB file: larger than the {MAX_FILE_BYTES / 2**20:.0f} "
                                     "MB the largest radiograph needs; not read")
                data = f.read()  # one read: the file is parsed, and checked for truncation, in memory
        except FileNotFoundError:
            raise DicomError(path, "file not found") from None
        except IsADirectoryError:
            raise DicomError(path, "a folder, not a file") from None
        except OSError as exc:
            raise DicomError(path, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
        ds, cut = parse_dataset(data, Path(path))
        del data  # the dataset holds the pixel data now: one copy of the file in memory, not two
        return _image(ds, Path(path), max_decode_size, cut)


def read_dicom_bytes(data: bytes, name: str, max_decode_size: int | None = None) -> DicomImage:
    """Return the radiograph in ``data`` (e.g. an upload called ``name``); nothing touches the disk."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(data) > MAX_FILE_BYTES:
            raise DicomError(name, f"{len(data) / 2**20:.0f} MB: larger than the {MAX_FILE_BYTES / 2**20:.0f} MB the "
                             "largest radiograph needs; not read")
        ds, cut = parse_dataset(data, Path(name))
        return _image(ds, Path(name), max_decode_size, cut)


def _image(ds, path: Path, max_decode_size: int | None, cut: bool) -> DicomImage:
    """Return the DicomImage of a parsed dataset (``cut``: the file ends inside its pixel data)."""
    # pydicom converts each element when it is first read, so a damaged header value surfaces in
    # any of the reads below: everything but our own DicomError becomes one, naming what failed
    stage = "header"
    try:
        if "PixelData" not in ds:
            raise DicomError(path, "truncated file: it ends inside the pixel data" if cut else "no pixel data")
        syntax = syntax_of(ds)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip().upper()
        rows, columns = dimensions(ds, path)
        check_budget(ds, rows, columns, path)  # before any decoder runs
        meta = {"view_position": _view_position(ds), "sex": _sex(ds), "age": parse_age(ds.get("PatientAge")),
                "pixel_spacing": _pixel_spacing(ds), "bits_stored": int(ds.get("BitsStored", 8) or 8),
                "row_direction": _row_direction(ds)}
        stage = "pixel data"
        if syntax in PILLOW_SYNTAXES:
            raw = _decode_pillow(ds, rows, columns, max_decode_size, path)
        elif syntax in UNCOMPRESSED_SYNTAXES or not syntax:
            if truncated(ds, rows, columns):
                raise DicomError(path, "truncated file: pixel data shorter than Rows x Columns")
            raw = _native_frame(ds)
        else:
            raise DicomError(path, f"unsupported transfer syntax {syntax}")
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and photometric.startswith(("RGB", "YBR")):
            raw = np.asarray(Image.fromarray(raw[..., :3].astype(np.uint8)).convert("L"))
            photometric = "MONOCHROME2"
        elif raw.ndim == 3:  # multi-frame: a radiograph has one, keep the first
            raw = raw[0]
        if raw.ndim != 2 or raw.size == 0:
            raise DicomError(path, f"unexpected pixel array shape {raw.shape}")
        if max_decode_size is None and raw.shape != (rows, columns):
            raise DicomError(path, f"decoded size {raw.shape} differs from Rows x Columns {(rows, columns)}")
        pixels = _to_uint8(raw, ds)
    except DicomError:
        raise
    except MemoryError:
        raise DicomError(path, f"{stage} asks for more memory than there is (corrupt sizes?)") from None
    except Exception as exc:
        raise DicomError(path, f"corrupt {stage} ({describe_error(exc)})") from None
    if photometric == "MONOCHROME1":
        np.subtract(255, pixels, out=pixels)
    elif photometric not in ("MONOCHROME2", ""):
        raise DicomError(path, f"unsupported photometric interpretation {photometric[:32]!r}")
    return DicomImage(
        patient_id=path.stem,
        pixels=np.ascontiguousarray(pixels),
        original_size=(rows, columns),
        photometric=photometric or "MONOCHROME2",
        transfer_syntax=syntax or "unknown",
        **meta,
    )


def _native_frame(ds) -> np.ndarray:
    """Return the first frame of native pixel data: a read-only view on the element where pydicom can give one
    (8-, 16- and 32-bit little-endian data), else its own array."""
    from pydicom.pixels import pixel_array

    bits = int(ds.get("BitsAllocated", 8) or 8)
    view = bits in (8, 16, 32) and syntax_of(ds) != BIG_ENDIAN
    return pixel_array(ds, index=0, view_only=view)


