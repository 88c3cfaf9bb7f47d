"""``ModelService``: the run's Detector as the web service uses it: one upload in, the API's JSON and what to draw."""

from __future__ import annotations

import threading
from pathlib import Path

from pneumodet.detector import load_detector
from pneumodet.io.dicom import read_dicom_bytes
from pneumodet.postprocess import PostProcess
from pneumodet.service.review import side_markers

DISPLAY_PX = 512


class ModelService:
    """The run's Detector; ``predict`` runs one inference at a time. The Detector is safe to share between threads;
    one at a time is a choice for the CPU: two inferences at once would share its cores' threads, each slower."""

    def __init__(self, run: Path):
        self.detector = load_detector(run)
        self.paths = self.detector.paths
        self.config = self.detector.config
        self.info = self.detector.info
        self.pp: PostProcess = self.detector.postprocess
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0  # the most inferences ever running at once (tests check it stays 1)
        self.served = 0

    def predict(self, data: bytes, filename: str) -> tuple[dict, tuple]:
        """Return (the API's JSON body, (pixels, boxes_orig_xyxy, scores, scale) for drawing it)."""
        image = self.detector.read(data, filename)  # decoded as prepare and predict decode it
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                found = self.detector.detect(image)
            finally:
                self.active -= 1
                self.served += 1
        height, width = image.original_size
        # decoded again, larger, only to draw it
        shown = read_dicom_bytes(data, filename, max_decode_size=max(DISPLAY_PX, self.config.data.image_size))
        spacing = image.pixel_spacing  # (between rows, between columns) in mm
        boxes = []
        for (x, y, w, h), s in zip(found.boxes_orig_xywh, found.scores, strict=True):
            box = {"x": round(float(x), 1), "y": round(float(y), 1), "width": round(float(w), 1),
                   "height": round(float(h), 1), "score": round(float(s), 4)}
            if spacing:
                box.update(width_mm=round(float(w) * spacing[1], 1), height_mm=round(float(h) * spacing[0], 1))
            boxes.append(box)
        markers = side_markers(image.view_position, image.row_direction)
        return {
            "patient_id": found.patient_id,
            **self.call(found),
            "boxes": boxes,
            "image_score": round(found.image_score, 4),
            "gate": None if found.gate != found.gate else round(found.gate, 4),  # NaN: the model has no gate
            "view": image.view_position, "age": image.age, "sex": image.sex,
            "original_size": {"height": height, "width": width},
            "pixel_spacing_mm": list(spacing) if spacing else None,
            "sides": None if markers is None else {"image_left": markers[0], "image_right": markers[1]},
        }, (shown.pixels, found.boxes_orig_xyxy, found.scores, (shown.pixels.shape[1] / width,
                                                                 shown.pixels.shape[0] / height), markers)

    def call(self, found) -> dict:
        """Return the detector's positive/negative call on one image and, in words, why."""
        pp, n = self.pp, len(found.scores)
        if n:
            return {"call": "positive", "call_reason": f"{n} box{'es' if n > 1 else ''} kept at box confidence "
                    f">= {pp.score_threshold:g}" + (f"; the gate's probability {found.gate:.2f} >= {pp.gate_threshold:g}"
                                                  if pp.gate_threshold > 0 else "")}
        if pp.gate_threshold > 0 and found.gate == found.gate and found.gate < pp.gate_threshold:
            return {"call": "negative", "call_reason": f"the gate's probability of an opacity, {found.gate:.2f}, is "
                    f"below its threshold {pp.gate_threshold:g}"}
        return {"call": "negative", "call_reason": f"no box reached the box confidence threshold {pp.score_threshold:g}"}
