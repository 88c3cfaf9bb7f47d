"""Untrusted bytes to a pydicom dataset, within a budget: what a DICOM file may cost is bounded before anything
is decompressed.

A file larger than ``MAX_FILE_BYTES`` is not read; Rows x Columns (and the bytes the pixel data needs) are checked
against ``MAX_PIXELS`` and ``MAX_DECODED_BYTES`` from the header, before any decoder runs; a deflated dataset is
inflated in steps, its header first, and never beyond what that header says the pixels need (pydicom would inflate
it whole, whatever it expands to). A dataset written without preamble and file meta is read as such.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

from pneumodet.errors import UserError

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


#: the most pixels one frame may have: real radiographs are up to ~4,300 x 4,300 (18.5 M)
MAX_PIXELS = 25_000_000


#: the most bytes the pixel data may need once decoded or inflated (25 M 16-bit pixels are 50 MB)
MAX_DECODED_BYTES = 128 * 2**20


#: room for the header and trailing elements around the pixel data
HEADER_BYTES = 16 * 2**20


#: the largest file read at all: the largest uncompressed image and its header
MAX_FILE_BYTES = MAX_DECODED_BYTES + HEADER_BYTES


class DicomError(UserError):
    """A DICOM file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def syntax_of(ds) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""


def parse_dataset(data: bytes, path: Path):
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
        raise DicomError(path, f"cannot parse DICOM ({describe_error(exc)})") from None
    ds.buffer = None  # pydicom keeps the buffer read from, which would keep the whole file in memory
    # pydicom drops an element the file ends inside of, with only a warning
    cut = "PixelData" not in ds and syntax_of(ds) != DEFLATED and data.find(PIXEL_DATA_TAG, 132) >= 0
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
    rows, columns = dimensions(header, path)
    check_budget(header, rows, columns, path)
    length = struct.unpack("<I", element[8:12])[0]
    if length > MAX_DECODED_BYTES:
        raise DicomError(path, f"pixel data of {length / 2**20:.0f} MB: more than the {MAX_DECODED_BYTES / 2**20:.0f} "
                         "MB a radiograph may need; not read")
    return fp.tell() + 12 + length + HEADER_BYTES


def check_budget(ds, rows: int, columns: int, path: Path) -> None:
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


def dimensions(ds, path: Path) -> tuple[int, int]:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise DicomError(path, "missing Rows/Columns") from None
    if not (1 <= rows <= MAX_SIDE_PX and 1 <= columns <= MAX_SIDE_PX):
        raise DicomError(path, f"implausible Rows x Columns {rows} x {columns}")
    return rows, columns


def truncated(ds, rows: int, columns: int) -> bool:
    """Return whether native (uncompressed) pixel data is shorter than its dimensions need."""
    value = ds.PixelData
    bits = int(ds.get("BitsAllocated", 8) or 8)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return len(value) < rows * columns * frames * samples * max(bits, 8) // 8


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def describe_error(exc: BaseException) -> str:
    """Return '<Type>: <message>' for an exception, one line, without object reprs or long dumps."""
    message = _OBJECT_REPR.sub("the file", str(exc)).replace("\n", " ").strip()
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
