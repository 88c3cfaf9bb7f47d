"""A Grayscale Softcopy Presentation State that draws the boxes and their confidences over the original image:
what PACS viewers show beside the image, where an SR's measurements are often not drawn."""

from __future__ import annotations

import warnings

import numpy as np

from pneumodet import __version__
from pneumodet.report.dicom_sr import rectangle

#: the series the presentation states go in (SRs: dicom_sr.SERIES_NUMBER)
SERIES_NUMBER = 902
LAYER = "PNEUMODET"


def build_gsps(source, boxes_orig_xyxy: np.ndarray, scores: np.ndarray, image_score: float, *, run_name: str = "",
               sop_instance_uid: str | None = None, series_instance_uid: str | None = None):
    """Return a highdicom GrayscaleSoftcopyPresentationState of ``source`` (its header dataset) with each box as a
    rectangle labelled by its confidence, and the image score in a corner; its UIDs new unless given."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="pneumodet: lung opacities")
    objects, texts = [], []
    for box, score in zip(np.asarray(boxes_orig_xyxy, dtype=np.float64).reshape(-1, 4), scores, strict=True):
        objects.append(hd.pr.GraphicObject(graphic_type="POLYLINE", graphic_data=rectangle(box), units="PIXEL"))
        texts.append(hd.pr.TextObject(text_value=f"opacity {float(score):.2f}", units="PIXEL",
                                      anchor_point=(float(box[0]), float(max(box[1] - 8.0, 0.0)))))
    summary = f"pneumodet {run_name}: image score {image_score:.2f}" + ("" if objects else ", no box")
    texts.append(hd.pr.TextObject(text_value=summary.strip()[:64], units="PIXEL", anchor_point=(8.0, 8.0)))
    annotation = hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=layer,
                                         graphic_objects=objects or None, text_objects=texts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        return hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[source], series_instance_uid=series_instance_uid or generate_uid(),
            series_number=SERIES_NUMBER, sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=1,
            manufacturer="pneumodet", manufacturer_model_name="pneumodet", software_versions=__version__,
            device_serial_number="0", content_label=LAYER, content_description=summary.strip()[:64],
            graphic_annotations=[annotation], graphic_layers=[layer])


def read_gsps_boxes(ds) -> tuple[np.ndarray, list[str]]:
    """Return (boxes_xyxy of the rectangles, the texts) drawn by a presentation state :func:`build_gsps` wrote."""
    boxes, texts = [], []
    for annotation in ds.get("GraphicAnnotationSequence", []):
        for graphic in annotation.get("GraphicObjectSequence", []):
            points = np.asarray(graphic.GraphicData, dtype=np.float64).reshape(-1, 2)
            boxes.append([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])
        texts += [str(t.UnformattedTextValue) for t in annotation.get("TextObjectSequence", [])]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), texts
