"""Predictions back to the clinic as DICOM: one Structured Report (TID 1500 measurement report) per image.

Each kept box is a planar ROI: a closed POLYLINE rectangle (SR has no RECTANGLE graphic type) in the
source image's own pixels, (column, row) with 0.0\\0.0 at the top left corner of the top left pixel (the
RSNA x, y convention), carrying the box's confidence. An image-level group carries the image score (the
gate's probability, else the highest box score). The observer is the pneumodet device; every group names
the algorithm and its version. The SR references the source image's Study, Series and SOP Instance UIDs
and belongs to its study, so a PACS or viewer (OHIF, Weasis, 3D Slicer) shows it beside the image.

Needs ``highdicom`` (a dependency of pneumodet).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumodet.errors import UserError
from pneumodet.files import atomic_path
from pneumodet.io.layout import SR_SUFFIX

SERIES_NUMBER = 901
#: codes outside DICOM's and SNOMED's vocabularies, in a private coding scheme (PS3.16 8.2: "99" prefix)
SCHEME = "99PNEUMODET"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: what a source image must carry for the SR to point at it; missing ones get new UIDs (said on stderr)
REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: patient and study attributes an SR copies from its evidence, which must be present (DICOM type 2)
TYPE2_COPIED = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                "StudyID", "AccessionNumber")


def _codes():
    from pydicom.sr.coding import Code

    return {
        "procedure": Code("399208008", "SCT", "Plain X-ray of chest"),
        "finding": Code("233604007", "SCT", "Pneumonia"),
        "site": Code("39607008", "SCT", "Lung structure"),
        "box_confidence": Code("box-confidence", SCHEME, "Detection confidence"),
        "image_score": Code("image-score", SCHEME, "Image-level probability of lung opacity"),
        "no_units": Code("1", "UCUM", "no units"),
    }


def source_header(path: str | Path, warn=None):
    """Return the source DICOM's header (no pixels), with new UIDs for any of REFERENCE_UIDS it lacks.

    ``warn(message)`` is told which were missing (default: a UserWarning, one line under the command line).
    """
    import pydicom
    from pydicom.uid import generate_uid

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot read the DICOM header ({type(exc).__name__})") from None
    missing = [k for k in REFERENCE_UIDS if not str(ds.get(k, "") or "").strip()]
    for keyword in missing:
        setattr(ds, keyword, generate_uid())
    if not str(ds.get("SOPClassUID", "") or "").strip():
        missing.append("SOPClassUID")
        ds.SOPClassUID = SECONDARY_CAPTURE
    if missing:
        (warn or _warn)(f"{Path(path).name}: no {', '.join(missing)}; its SR references new UIDs "
                          "(it will not link to the image in a PACS)")
    if "PatientID" not in ds:
        ds.PatientID = Path(path).stem
    for keyword in TYPE2_COPIED:  # an SR must carry them, empty if the source has no value
        if keyword not in ds:
            setattr(ds, keyword, "")
    blanked = _blank_nonconformant(ds)
    if blanked:
        (warn or _warn)(f"{Path(path).name}: invalid {', '.join(blanked)}; left empty in its SR")
    return ds


def _blank_nonconformant(ds) -> list[str]:
    """Empty the copied attributes whose values DICOM (and so highdicom) refuses; return their keywords.

    Real archives hold dates like 2020-01-01, times like 25:99 and sexes like X; the SR is still worth writing.
    """
    from pydicom.valuerep import DA, TM

    blanked = []
    for keyword, parse in (("StudyDate", DA), ("PatientBirthDate", DA), ("StudyTime", TM)):
        value = str(ds.get(keyword, "") or "").strip()
        try:
            if value:
                parse(value)
        except (ValueError, TypeError):
            setattr(ds, keyword, "")
            blanked.append(keyword)
    if str(ds.get("PatientSex", "") or "").strip().upper() not in ("", "M", "F", "O"):
        ds.PatientSex = ""
        blanked.append("PatientSex")
    return blanked


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def rectangle(box_xyxy: Sequence[float]) -> np.ndarray:
    """Return a closed POLYLINE (5 (column, row) points, clockwise from the top left) for a box."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def build_sr(source, boxes_orig_xyxy: np.ndarray, scores: np.ndarray, image_score: float, *,
             algorithm: str = "pneumodet", version: str | None = None, run_name: str = "",
             sop_instance_uid: str | None = None, series_instance_uid: str | None = None):
    """Return a highdicom ComprehensiveSR for one image's predictions (``source``: its header dataset); its UIDs
    new unless given (the DICOM node derives them from the source's, so a result sent again is the same one)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from pneumodet import __version__

    c = _codes()
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm, version=version or __version__,
                                                 parameters=[run_name] if run_name else None)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm, version or __version__, run_name]), name=algorithm,
            manufacturer_name="pneumodet", model_name=run_name or None))
    region_source = hd.sr.SourceImageForRegion.from_source_image(source)
    groups = []
    for i, (box, score) in enumerate(zip(np.asarray(boxes_orig_xyxy).reshape(-1, 4), scores, strict=True)):
        confidence = hd.sr.Measurement(name=c["box_confidence"], value=float(score), unit=c["no_units"],
                                       algorithm_id=algorithm_id)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"box {i + 1}"),
            referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                                graphic_data=rectangle(box), source_image=region_source),
            finding_type=c["finding"], algorithm_id=algorithm_id, finding_sites=[hd.sr.FindingSite(c["site"])],
            measurements=[confidence]))
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="image"),
        finding_type=c["finding"], algorithm_id=algorithm_id,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[hd.sr.Measurement(name=c["image_score"], value=float(image_score), unit=c["no_units"],
                                        algorithm_id=algorithm_id)]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=c["procedure"], imaging_measurements=groups)
    with warnings.catch_warnings():
        # the RSNA files' PatientName is the image id: one component, which highdicom warns about every time
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        return hd.sr.ComprehensiveSR(
            evidence=[source], content=report, series_instance_uid=series_instance_uid or generate_uid(),
            series_number=SERIES_NUMBER, sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=1,
            manufacturer="pneumodet",
            series_description=f"pneumodet {version or __version__} {run_name}".strip()[:64])


def write_sr(source_path: str | Path, out_path: str | Path, boxes_orig_xyxy: np.ndarray, scores: np.ndarray,
             image_score: float, *, run_name: str = "", warn=None) -> Path:
    """Write the SR of one image's predictions to ``out_path`` atomically; return the path.

    ``source_path``: the DICOM the boxes were predicted on (its header is referenced; a missing UID gets a
    new one, said through ``warn``).
    """
    source = source_header(source_path, warn)
    sr = build_sr(source, boxes_orig_xyxy, scores, image_score, run_name=run_name)
    with atomic_path(out_path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return Path(out_path)


def write_dicom_sr(detection, source_path: str | Path, out_path: str | Path, *, run_name: str = "") -> Path:
    """Write a :class:`~pneumodet.detector.Detection` of ``source_path`` as a DICOM SR (the public API's form)::

        found = detector.detect("patient.dcm")
        pneumodet.write_dicom_sr(found, "patient.dcm", "patient.sr.dcm")
    """
    return write_sr(source_path, out_path, detection.boxes_orig_xyxy, detection.scores, detection.image_score,
                    run_name=run_name)


def sr_path(out_dir: str | Path, patient_id: str) -> Path:
    """Return where the SR of ``patient_id`` goes in ``out_dir``."""
    return Path(out_dir) / f"{patient_id}{SR_SUFFIX}"


def read_sr_boxes(path: str | Path) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Read an SR written by :func:`write_sr` back with highdicom: (boxes_xyxy, scores, image score, references).

    ``references``: the referenced source image's study, series and SOP instance UIDs.
    """
    import highdicom as hd
    import pydicom

    sr = hd.sr.srread(path) if hasattr(hd.sr, "srread") else hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    c = _codes()
    report = sr.content
    boxes, scores = [], []
    for group in report.get_planar_roi_measurement_groups():
        points = np.asarray(group.roi.value).reshape(-1, 2)
        boxes.append([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])
        scores.append(float(group.get_measurements(name=c["box_confidence"])[0].value))
    image_groups = report.get_image_measurement_groups()
    image_score = float(image_groups[0].get_measurements(name=c["image_score"])[0].value)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    series = evidence.ReferencedSeriesSequence[0]
    references = {"StudyInstanceUID": str(evidence.StudyInstanceUID),
                  "SeriesInstanceUID": str(series.SeriesInstanceUID),
                  "SOPInstanceUID": str(series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)}
    return np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(scores, dtype=float), image_score, references
