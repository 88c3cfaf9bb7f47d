"""``load_detector(run) -> Detector``: the one path from a DICOM (path, bytes or pixels) to boxes in the
image's own pixels, with scores and the image score. ``predict``, ``serve``, ``evaluate``, the
benchmarks and the public API all go through it, so a fix to decoding, scaling or post-processing
lands once. Works without Lightning.

Spaces are in the names: ``*_cache_*`` boxes are in the model's square input (``image_size``
pixels), ``*_orig_*`` boxes in the DICOM's own Rows x Columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pneumodet.boxes import xyxy_to_xywh
from pneumodet.config import RunConfig
from pneumodet.data.cache import read_for_cache, to_cache_size
from pneumodet.errors import UserError
from pneumodet.io.dicom import DicomImage
from pneumodet.postprocess import PostProcess, image_score, postprocess
from pneumodet.predict import predictor_for, to_original
from pneumodet.runs import RunPaths, find_run, load_trained


@dataclass(frozen=True)
class Detection:
    """What the detector says about one image, in the image's own pixels."""

    patient_id: str
    boxes_orig_xyxy: np.ndarray  # (N, 4) float, kept by the post-processing, highest score first
    scores: np.ndarray  # (N,)
    image_score: float  # the image's highest candidate score after NMS, before the threshold
    original_size: tuple[int, int]  # (height, width)

    @property
    def boxes_orig_xywh(self) -> np.ndarray:
        """Return the boxes as (N, 4) x, y, width, height: the Kaggle submission's format."""
        return xyxy_to_xywh(self.boxes_orig_xyxy)


def image_tensor(pixels: np.ndarray, size_px: int) -> torch.Tensor:
    """Return (H, W) uint8 pixels prepared exactly as the cache prepares them: float [1, size, size] in [0, 1]."""
    resized = to_cache_size(np.asarray(pixels, dtype=np.uint8), size_px)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).unsqueeze(0).float().div_(255.0)


def tuned_postprocess(paths: RunPaths, fallback: PostProcess) -> PostProcess:
    """Return the post-processing evaluate saved in metrics.json, else ``fallback``."""
    if paths.metrics_json.is_file():
        try:
            saved = json.loads(paths.metrics_json.read_text()).get("postprocess")
        except ValueError:
            raise UserError(f"{paths.metrics_json}: not valid JSON; run pneumodet evaluate again") from None
        if saved:
            return PostProcess(**saved)
    return fallback


class Detector:
    """A trained model with its post-processing: DICOMs in, :class:`Detection` out.

    ``postprocess`` is the run's tuned one (metrics.json) unless given; ``hflip_tta`` the run's setting
    unless given.
    """

    def __init__(self, model, config: RunConfig, postprocess: PostProcess, *, hflip_tta: bool | None = None,
                 paths: RunPaths | None = None, info: dict | None = None):
        self.config, self.postprocess, self.paths, self.info = config, postprocess, paths, info or {}
        self.image_size = config.data.image_size
        self.predictor = predictor_for(model, config, hflip_tta=hflip_tta)

    def read(self, source: str | Path | bytes | DicomImage, name: str | None = None) -> DicomImage:
        """Return the DICOM decoded as the cache decodes it (reduced-scale JPEG decode where it can)."""
        return source if isinstance(source, DicomImage) else read_for_cache(source, self.image_size, name)

    def candidates(self, tensors: list[torch.Tensor], original_sizes: list[tuple[int, int]]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return per image (boxes_orig_xyxy, scores): every candidate, before post-processing."""
        out = []
        for (boxes_cache_xyxy, scores), (height, width) in zip(self.predictor(tensors), original_sizes, strict=True):
            scale_x, scale_y = self.image_size / width, self.image_size / height
            out.append((to_original(boxes_cache_xyxy, scale_x, scale_y, height, width), scores))
        return out

    def finish(self, patient_id: str, boxes_orig_xyxy: np.ndarray, scores: np.ndarray,
               original_size: tuple[int, int]) -> Detection:
        """Return the Detection of one image's candidates after post-processing."""
        kept, kept_scores = postprocess(boxes_orig_xyxy, scores, self.postprocess)
        return Detection(patient_id, kept, kept_scores, image_score(boxes_orig_xyxy, scores, self.postprocess),
                         original_size)

    def detect_tensors(self, patient_ids: list[str], tensors: list[torch.Tensor],
                       original_sizes: list[tuple[int, int]]) -> list[Detection]:
        """Return Detections for images already prepared by :func:`image_tensor` (a batch)."""
        raw = self.candidates(tensors, original_sizes)
        return [self.finish(pid, boxes, scores, size)
                for pid, (boxes, scores), size in zip(patient_ids, raw, original_sizes, strict=True)]

    def detect(self, source: str | Path | bytes | DicomImage | np.ndarray, name: str | None = None) -> Detection:
        """Return the Detection for one DICOM file path, its bytes, a DicomImage, or (H, W) uint8 pixels.

        Raises :class:`pneumodet.io.dicom.DicomError` for a file that cannot be used.
        """
        if isinstance(source, np.ndarray):
            if source.ndim != 2 or source.dtype != np.uint8:
                raise UserError(f"pixels must be a (H, W) uint8 array (bright = dense), got {source.dtype} "
                                f"{source.shape}")
            pid, pixels, size = name or "image", source, tuple(source.shape)
        else:
            image = self.read(source, name)
            pid, pixels, size = image.patient_id, image.pixels, image.original_size
        return self.detect_tensors([pid], [image_tensor(pixels, self.image_size)], [size])[0]


def load_detector(run: str | Path, *, overrides: dict | None = None, hflip_tta: bool | None = None) -> Detector:
    """Return the Detector of a trained run folder: its best weights and its tuned post-processing.

    ``overrides``: post-processing settings to replace (score_threshold, nms_iou, max_boxes, shrink);
    ``hflip_tta``: flip test-time augmentation on or off (default: the run's config).
    """
    paths = find_run(run)
    model, config, info = load_trained(run)
    pp = tuned_postprocess(paths, PostProcess.from_config(config.predict))
    pp = replace(pp, **{k: v for k, v in (overrides or {}).items() if v is not None})
    return Detector(model, config, pp, hflip_tta=hflip_tta, paths=paths, info=info)
