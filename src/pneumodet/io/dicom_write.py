"""Write a chest radiograph as a DICOM like the RSNA files: what ``synth`` and the tests make."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pneumodet.files import atomic_path
from pneumodet.io.dicom_parse import JPEG_BASELINE

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
