"""Hostile files made by the tests themselves: decompression bombs and their variants, without ever holding the
expanded bytes in memory."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _header(rows: int, columns: int, bits: int, padding: int) -> bytes:
    """Return an explicit VR little-endian CR dataset without pixel data (with a private element of ``padding``
    bytes before Rows, to push the header past a reader's first look)."""
    ds = Dataset()
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "bomb"
    if padding:
        ds.add_new(0x00090010, "LO", "PNEUMODET TEST")
        ds.add_new(0x00091000, "OB", bytes(padding))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def deflated_bomb(path: str | Path, rows: int, columns: int, *, bits: int = 16, pixel_bytes: int | None = None,
                  trailing_bytes: int = 0, padding: int = 0) -> Path:
    """Write a deflated (1.2.840.10008.1.2.1.99) DICOM of zeros, compressed chunk by chunk at level 9.

    ``pixel_bytes``: what the pixel data element holds (default: what Rows x Columns need; a header that lies
    gives another); ``trailing_bytes``: zeros in a trailing padding element after it; ``padding``: a private
    element of that many bytes before Rows.
    """
    length = rows * columns * bits // 8 if pixel_bytes is None else pixel_bytes
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(_header(rows, columns, bits, padding) + PIXEL_DATA_TAG + b"OW\0\0"
                                 + struct.pack("<I", length))]
    zeros = memoryview(bytes(1 << 24))

    def stream(count: int) -> None:
        while count:
            step = min(count, len(zeros))
            parts.append(compressor.compress(zeros[:step]))
            count -= step

    stream(length)
    if trailing_bytes:  # (FFFC,FFFC) Data Set Trailing Padding
        parts.append(compressor.compress(b"\xfc\xff\xfc\xffOB\0\0" + struct.pack("<I", trailing_bytes)))
        stream(trailing_bytes)
    parts.append(compressor.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    write_file_meta_info(fp, meta)
    path = Path(path)
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + b"".join(parts))
    return path
