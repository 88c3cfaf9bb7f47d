"""Read a chest radiograph DICOM into a uint8 image in the MONOCHROME2 convention.

JPEG Baseline (the RSNA transfer syntax) is decoded by Pillow directly from the encapsulated
frame: Pillow decodes these files ~4x faster than pylibjpeg, and it can decode at 1/2, 1/4 or
1/8 scale for free when a smaller image is all that is needed (``max_decode_size``).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError

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
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}
MAX_AGE_YEARS = 120


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
    """Rescale slope and intercept -> VOI window, else the VOI LUT table, else min-max for > 8-bit data; 8-bit data
    is kept as stored."""
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    slope = _first_number(ds.get("RescaleSlope")) or 1.0
    intercept = _first_number(ds.get("RescaleIntercept")) or 0.0
    if raw.dtype == np.uint8 and bits_stored <= 8 and slope == 1.0 and intercept == 0.0:
        return raw
    values = raw.astype(np.float32) * slope + intercept
    centre = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 1:
        # DICOM PS3.3 C.11.2.1.2 linear VOI function
        scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    elif (looked_up := _voi_lut(values, ds)) is not None:
        scaled = looked_up
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.round(scaled * 255).astype(np.uint8)


def _voi_lut(values: np.ndarray, ds) -> np.ndarray | None:
    """Return ``values`` through the first VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1), scaled from the
    LUT's own output range to 0-1; None without one, or with one that cannot be used (min-max instead).

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
        return (apply_voi(np.round(values).astype(np.int64), ds).astype(np.float32) - low) / (high - low)
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
            data = Path(path).read_bytes()  # one read: the file is parsed, and checked for truncation, in memory
        except FileNotFoundError:
            raise DicomError(path, "file not found") from None
        except IsADirectoryError:
            raise DicomError(path, "a folder, not a file") from None
        except OSError as exc:
            raise DicomError(path, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
        return _read_dicom(data, Path(path), max_decode_size)


def read_dicom_bytes(data: bytes, name: str, max_decode_size: int | None = None) -> DicomImage:
    """Return the radiograph in ``data`` (e.g. an upload called ``name``); nothing touches the disk."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_dicom(data, Path(name), max_decode_size)


def _read_dicom(data: bytes, path: Path, max_decode_size: int | None) -> DicomImage:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = _read_bare_dataset(data, path)
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise DicomError(path, f"cannot parse DICOM ({_describe(exc)})") from None
    # pydicom converts each element when it is first read, so a damaged header value surfaces in
    # any of the reads below: everything but our own DicomError becomes one, naming what failed
    stage = "header"
    try:
        if "PixelData" not in ds:
            # pydicom drops an element the file ends inside of, with only a warning
            cut = PIXEL_DATA_TAG in data[132:]
            raise DicomError(path, "truncated file: it ends inside the pixel data" if cut else "no pixel data")
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip().upper()
        rows, columns = _dimensions(ds, path)
        meta = {"view_position": _view_position(ds), "sex": _sex(ds), "age": parse_age(ds.get("PatientAge")),
                "pixel_spacing": _pixel_spacing(ds), "bits_stored": int(ds.get("BitsStored", 8) or 8)}
        stage = "pixel data"
        if syntax in PILLOW_SYNTAXES:
            raw = _decode_pillow(ds, rows, columns, max_decode_size, path)
        elif syntax in UNCOMPRESSED_SYNTAXES or not syntax:
            if _truncated(ds, rows, columns):
                raise DicomError(path, "truncated file: pixel data shorter than Rows x Columns")
            raw = ds.pixel_array
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
        pixels = 255 - pixels
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
