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
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

from pneumodet.errors import UserError
from pneumodet.files import atomic_path
from pneumodet.io.layout import image_files

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: Compressed syntaxes that Pillow's JPEG decoder reads (8-bit lossy JPEG).
PILLOW_SYNTAXES = {JPEG_BASELINE}
UNCOMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian: DEFLATED
}
DEFLATED = "1.2.840.10008.1.2.1.99"  # inflated here, within the budget, never by pydicom
BIG_ENDIAN = "1.2.840.10008.1.2.2"
MAX_AGE_YEARS = 120
#: the most pixels one frame may have: real radiographs are up to ~4,300 x 4,300 (18.5 M)
MAX_PIXELS = 25_000_000
#: the most bytes the pixel data may need once decoded or inflated (25 M 16-bit pixels are 50 MB)
MAX_DECODED_BYTES = 128 * 2**20
#: room for the header and trailing elements around the pixel data
HEADER_BYTES = 16 * 2**20
#: the largest file read at all: the largest uncompressed image and its header
MAX_FILE_BYTES = MAX_DECODED_BYTES + HEADER_BYTES
#: rows converted to uint8 at a time (each block's float32 copy is about this many pixels)
BLOCK_PIXELS = 1 << 20


class DicomError(UserError):
    """A DICOM file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


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


def folder_images(folder: str | Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Return :func:`~pneumodet.io.layout.image_files` of ``folder``: (image files, (file left out, file kept)).

    A UserError when the folder is missing or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: images folder not found")
    files, repeats = image_files(folder)
    if not files:
        raise UserError(f"{folder}: no .dcm files")
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
        ds, cut = _parse(data, Path(path))
        del data  # the dataset holds the pixel data now: one copy of the file in memory, not two
        return _image(ds, Path(path), max_decode_size, cut)


def read_dicom_bytes(data: bytes, name: str, max_decode_size: int | None = None) -> DicomImage:
    """Return the radiograph in ``data`` (e.g. an upload called ``name``); nothing touches the disk."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(data) > MAX_FILE_BYTES:
            raise DicomError(name, f"{len(data) / 2**20:.0f} MB: larger than the {MAX_FILE_BYTES / 2**20:.0f} MB the "
                             "largest radiograph needs; not read")
        ds, cut = _parse(data, Path(name))
        return _image(ds, Path(name), max_decode_size, cut)


def _image(ds, path: Path, max_decode_size: int | None, cut: bool) -> DicomImage:
    """Return the DicomImage of a parsed dataset (``cut``: the file ends inside its pixel data)."""
    # pydicom converts each element when it is first read, so a damaged header value surfaces in
    # any of the reads below: everything but our own DicomError becomes one, naming what failed
    stage = "header"
    try:
        if "PixelData" not in ds:
            raise DicomError(path, "truncated file: it ends inside the pixel data" if cut else "no pixel data")
        syntax = _syntax(ds)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip().upper()
        rows, columns = _dimensions(ds, path)
        _check_budget(ds, rows, columns, path)  # before any decoder runs
        meta = {"view_position": _view_position(ds), "sex": _sex(ds), "age": parse_age(ds.get("PatientAge")),
                "pixel_spacing": _pixel_spacing(ds), "bits_stored": int(ds.get("BitsStored", 8) or 8),
                "row_direction": _row_direction(ds)}
        stage = "pixel data"
        if syntax in PILLOW_SYNTAXES:
            raw = _decode_pillow(ds, rows, columns, max_decode_size, path)
        elif syntax in UNCOMPRESSED_SYNTAXES or not syntax:
            if _truncated(ds, rows, columns):
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
        raise DicomError(path, f"corrupt {stage} ({_describe(exc)})") from None
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


def _syntax(ds) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""


def _parse(data: bytes, path: Path):
    """Return (the dataset in ``data``, whether the file ends inside its pixel data): a deflated one inflated
    within its budget, a bare one (no preamble) read as such; a DicomError for anything else that does not
    parse."""
    try:
        ds = _read_deflated(data, path) if _is_deflated(data) else pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = _read_bare_dataset(data, path)
    except DicomError:
        raise
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise DicomError(path, f"cannot parse DICOM ({_describe(exc)})") from None
    ds.buffer = None  # pydicom keeps the buffer read from, which would keep the whole file in memory
    # pydicom drops an element the file ends inside of, with only a warning
    cut = "PixelData" not in ds and _syntax(ds) != DEFLATED and data.find(PIXEL_DATA_TAG, 132) >= 0
    return ds, cut


def _is_deflated(data: bytes) -> bool:
    """Return whether the file meta of ``data`` names the deflated transfer syntax (pydicom would inflate the
    whole dataset at once, whatever it expands to)."""
    if data[128:132] != b"DICM":
        return False
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    return str(_read_file_meta_info(fp).get("TransferSyntaxUID", "")) == DEFLATED


def _read_deflated(data: bytes, path: Path):
    """Return the deflated dataset in ``data``, inflated in steps: first until its header is whole (a megabyte,
    doubled up to HEADER_BYTES), whose Rows, Columns and pixel data length are checked against the budget before
    the rest is inflated, and never more than that length (plus room for trailing elements)."""
    fp = io.BytesIO(data)
    preamble = read_preamble(fp, False)
    file_meta = _read_file_meta_info(fp)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, body = memoryview(data)[fp.tell():], io.BytesIO()

    def inflate(upto: int) -> bool:
        """Inflate until ``body`` holds ``upto`` bytes; return False if the stream ended first."""
        nonlocal pending
        while body.tell() < upto:
            chunk = inflater.decompress(pending, min(8 * 2**20, upto - body.tell()))
            pending = inflater.unconsumed_tail
            if not chunk:
                return False
            body.write(chunk)
        return True

    look, limit = 2**20, None
    while limit is None:
        more = inflate(look)
        limit = _inflated_limit(body.getvalue(), path)
        if limit is None and not more:
            limit = body.tell()  # all of it is here: read as it is (its checks follow)
        elif limit is None and look >= HEADER_BYTES:
            raise DicomError(path, f"no pixel data in the first {HEADER_BYTES / 2**20:.0f} MB of the inflated "
                             "dataset; not read")
        look *= 2
    if inflate(limit + 1):
        raise DicomError(path, f"deflated data expands beyond the {limit / 2**20:.0f} MB its header allows; "
                         "not read")
    body.seek(0)
    dataset = read_dataset(body, False, True)
    ds = pydicom.dataset.FileDataset(None, dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _inflated_limit(head: bytes, path: Path) -> int | None:
    """Return how many bytes the deflated dataset that starts with ``head`` may inflate to: its header, its pixel
    data and room for trailing elements; None if ``head`` does not reach the pixel data. A DicomError if the
    header asks for more than the budget."""
    fp = io.BytesIO(head)
    try:
        header = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010)
    except Exception:  # cut inside an element: not whole yet (or damaged, which the full read will say)
        return None
    element = head[fp.tell():fp.tell() + 12]
    if len(element) < 12 or element[:4] != PIXEL_DATA_TAG:
        return None
    rows, columns = _dimensions(header, path)
    _check_budget(header, rows, columns, path)
    length = struct.unpack("<I", element[8:12])[0]
    if length > MAX_DECODED_BYTES:
        raise DicomError(path, f"pixel data of {length / 2**20:.0f} MB: more than the {MAX_DECODED_BYTES / 2**20:.0f} "
                         "MB a radiograph may need; not read")
    return fp.tell() + 12 + length + HEADER_BYTES


def _check_budget(ds, rows: int, columns: int, path: Path) -> None:
    """Raise a DicomError when one frame of ``rows`` x ``columns`` exceeds MAX_PIXELS, or the pixel data the
    header describes (every frame and sample) exceeds MAX_DECODED_BYTES: before anything is decoded."""
    if rows * columns > MAX_PIXELS:
        raise DicomError(path, f"{rows} x {columns} pixels: more than the {MAX_PIXELS / 1e6:.0f} M a radiograph may "
                         "have; not decoded")
    try:
        bits = max(int(ds.get("BitsAllocated", 8) or 8), 1)
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        samples = max(int(ds.get("SamplesPerPixel", 1) or 1), 1)
    except (TypeError, ValueError):
        raise DicomError(path, "corrupt header (BitsAllocated, NumberOfFrames or SamplesPerPixel)") from None
    needed = rows * columns * frames * samples * -(-bits // 8)
    if needed > MAX_DECODED_BYTES:
        raise DicomError(path, f"pixel data of {needed / 2**20:.0f} MB ({frames} frame(s) of {rows} x {columns}, "
                         f"{bits} bits): more than the {MAX_DECODED_BYTES / 2**20:.0f} MB a radiograph may need; "
                         "not decoded")


def _native_frame(ds) -> np.ndarray:
    """Return the first frame of native pixel data: a read-only view on the element where pydicom can give one
    (8-, 16- and 32-bit little-endian data), else its own array."""
    from pydicom.pixels import pixel_array

    bits = int(ds.get("BitsAllocated", 8) or 8)
    view = bits in (8, 16, 32) and _syntax(ds) != BIG_ENDIAN
    return pixel_array(ds, index=0, view_only=view)


def _read_bare_dataset(data: bytes, path: Path):
    """Read a DICOM written without the 128-byte preamble, "DICM" and file meta (older systems and some archives
    write bare datasets); its encoding gives the transfer syntax. Anything that does not read as an image with
    Rows, Columns and pixel data is "not a DICOM file"."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        implicit, little = ds.original_encoding
        if implicit is None or "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
            raise ValueError("not an image dataset")
    except Exception:  # text, another format, or bytes pydicom could only guess at
        raise DicomError(path, "not a DICOM file (no DICM preamble)") from None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                      else pydicom.uid.ExplicitVRLittleEndian if little
                                      else pydicom.uid.ExplicitVRBigEndian)
    return ds


PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
#: the largest side a radiograph may claim: real detectors are under 4,300 px
MAX_SIDE_PX = 16384


def _dimensions(ds, path: Path) -> tuple[int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise DicomError(path, "missing Rows/Columns") from None
    if not (1 <= rows <= MAX_SIDE_PX and 1 <= columns <= MAX_SIDE_PX):
        raise DicomError(path, f"implausible Rows x Columns {rows} x {columns}")
    return rows, columns


def _truncated(ds, rows: int, columns: int) -> bool:
    """Return whether native (uncompressed) pixel data is shorter than its dimensions need."""
    value = ds.PixelData
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return len(value) < rows * columns * frames * samples * max(bits, 8) // 8


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def _describe(exc: BaseException) -> str:
    """Return '<Type>: <message>' for an exception, one line, without object reprs or long dumps."""
    message = _OBJECT_REPR.sub("the file", str(exc)).replace("\n", " ").strip()
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    transfer_syntax: str = JPEG_BASELINE,
    photometric: str = "MONOCHROME2",
    tags: dict | None = None,
    jpeg_quality: int = 90,
    durable: bool = True,
) -> None:
    """Write a single-frame grayscale DICOM like the RSNA files (CR, chest), atomically.

    ``pixels`` (H, W) uint8 for JPEG Baseline, uint8 or uint16 for uncompressed syntaxes; ``tags``
    (keyword -> value) are added last and may override the defaults (e.g. BitsStored). ``durable=False``
    skips the fsync, for bulk writes of files that can be made again (synthetic data).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "sop"])
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = "view: PA"
    ds.PatientName = ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.StudyID = ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if transfer_syntax == JPEG_BASELINE:
        if pixels.dtype != np.uint8:
            raise ValueError("JPEG Baseline needs uint8 pixels")
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=jpeg_quality)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PatientAge "51" (as in the real files) is not a valid AS
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        with atomic_path(path, durable=durable) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
