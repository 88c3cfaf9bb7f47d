"""pneumodet: find pneumonia on chest radiographs (RSNA Pneumonia Detection Challenge).

The public API, for code and notebooks::

    import pneumodet

    detector = pneumodet.load_detector("runs/demo")        # a trained run folder
    found = detector.detect("patient.dcm")                  # a path, the file's bytes, or (H, W) uint8 pixels
    found.boxes_orig_xywh, found.scores, found.image_score  # in the DICOM's own pixels, highest score first
    flipped = detector.detect("patient.dcm", settings=detector.settings.but(hflip_tta=True))  # this call only
    pneumodet.write_dicom_sr(found, "patient.dcm", "patient.sr.dcm")  # the boxes as a DICOM Structured Report

    image = pneumodet.read_dicom("patient.dcm")             # uint8, MONOCHROME2, with view/age/sex
    config = pneumodet.load_config("demo", ["train.epochs=4"])   # a packaged recipe, or a YAML path
    score = pneumodet.rsna_map(truths_xyxy, [pneumodet.Prediction(boxes_xyxy, scores)])  # .rsna_map

Names load on first use, so ``import pneumodet`` (and the command line's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_detector": "pneumodet.detector",
    "Detector": "pneumodet.detector",
    "Detection": "pneumodet.detector",
    "InferenceSettings": "pneumodet.settings",
    "PostProcess": "pneumodet.postprocess",
    "read_dicom": "pneumodet.io.dicom",
    "read_dicom_bytes": "pneumodet.io.dicom",
    "DicomImage": "pneumodet.io.dicom",
    "DicomError": "pneumodet.io.dicom",
    "rsna_map": "pneumodet.metrics",
    "Prediction": "pneumodet.metrics",
    "load_config": "pneumodet.config_files",
    "RunConfig": "pneumodet.config",
    "UserError": "pneumodet.errors",
    "write_dicom_sr": "pneumodet.report.dicom_sr",
    "read_sr_boxes": "pneumodet.report.dicom_sr",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pneumodet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
