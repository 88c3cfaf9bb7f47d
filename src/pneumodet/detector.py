"""``load_detector(run) -> Detector``: the one path from a DICOM (path, bytes or pixels) to boxes in the
image's own pixels, with scores and the image score. ``predict``, ``serve``, ``evaluate``, the
benchmarks and the public API all go through it, so a fix to decoding, scaling or post-processing
lands once. Works without Lightning.

Spaces are in the names: ``*_cache_*`` boxes are in the model's square input (``image_size``
pixels), ``*_orig_*`` boxes in the DICOM's own Rows x Columns.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pneumodet.boxes import xyxy_to_xywh
from pneumodet.candidates import Candidates
from pneumodet.checkpoints import fold_runs, load_trained
from pneumodet.config import RunConfig
from pneumodet.config_checks import ENGINES
from pneumodet.data.cache import read_for_cache, to_cache_size
from pneumodet.data.dataset import to_model_input
from pneumodet.errors import UserError
from pneumodet.forward import TorchBackend
from pneumodet.inference import fuse_candidates, tta_candidates
from pneumodet.io.dicom import DicomImage
from pneumodet.postprocess import PostProcess, image_score
from pneumodet.postprocess import postprocess as postprocess_boxes
from pneumodet.runs import RunPaths, find_run, is_folds
from pneumodet.settings import InferenceSettings, read_tuning, resolve


@dataclass(frozen=True)
class Detection:
    """What the detector says about one image, in the image's own pixels."""

    patient_id: str
    boxes_orig_xyxy: np.ndarray  # (N, 4) float, kept by the post-processing, highest score first
    scores: np.ndarray  # (N,)
    image_score: float  # the gate's probability of any opacity; without a gate the highest box score
    original_size: tuple[int, int]  # (height, width)
    gate: float = float("nan")  # the gate's probability (NaN: the model has no gate)

    @property
    def boxes_orig_xywh(self) -> np.ndarray:
        """Return the boxes as (N, 4) x, y, width, height: the Kaggle submission's format."""
        return xyxy_to_xywh(self.boxes_orig_xyxy)


def image_tensor(pixels: np.ndarray, size_px: int) -> torch.Tensor:
    """Return (H, W) uint8 pixels prepared exactly as the cache prepares them: float [1, size, size] in [0, 1]."""
    return to_model_input(to_cache_size(np.asarray(pixels, dtype=np.uint8), size_px))


class Detector:
    """A trained model (or an ensemble of them) with its settings: DICOMs in, :class:`Detection` out.

    ``backends``: one per model (:class:`pneumodet.forward.TorchBackend`, or the ONNX one), sharing ``config``'s
    input size. An ensemble's candidates, each model's after its own TTA, are merged by weighted box fusion (scored
    as :meth:`fused_score` says) and their gates averaged. ``settings`` and ``postprocess`` are what every call uses
    unless it passes its own: a Detector changes nothing of its models, so threads may share one.
    """

    def __init__(self, backends: list, config: RunConfig, settings: InferenceSettings, postprocess: PostProcess, *,
                 paths: RunPaths | None = None, info: dict | None = None):
        self.backends, self.config, self.paths, self.info = list(backends), config, paths, info or {}
        self.settings, self.postprocess = settings, postprocess
        self.image_size = config.data.image_size
        names = {b.name for b in self.backends}
        self.backend = names.pop() if len(names) == 1 else "mixed"

    def fused_score(self, pp: PostProcess) -> str:
        """How an ensemble scores a fused box. With the gate applied, the mean over the models that found it: the
        thresholds were tuned on single models' (out-of-fold) scores, and the gate, not the vote, removes the boxes
        of negative images. Without it, the average over all models, so a box one model found is down-weighted
        (docs/benchmarks-history.md compares the two)."""
        return "found" if pp.gate_threshold > 0 else "average"

    def read(self, source: str | Path | bytes | DicomImage, name: str | None = None) -> DicomImage:
        """Return the DICOM decoded as the cache decodes it (reduced-scale JPEG decode where it can)."""
        return source if isinstance(source, DicomImage) else read_for_cache(source, self.image_size, name)

    def candidates(self, tensors: list[torch.Tensor], original_sizes: list[tuple[int, int]],
                   settings: InferenceSettings | None = None, postprocess: PostProcess | None = None
                   ) -> list[Candidates]:
        """Return per image the Candidates (boxes in the image's own pixels, scores, gate) before post-processing,
        for images prepared by :func:`image_tensor`; ``original_sizes``: each image's (height, width).
        ``postprocess`` matters only to an ensemble (how fused boxes are scored)."""
        settings = settings or self.settings
        per_model = [tta_candidates(b, tensors, self.image_size, settings) for b in self.backends]
        found = per_model[0] if len(per_model) == 1 else [
            fuse_candidates(list(c), score=self.fused_score(postprocess or self.postprocess))
            for c in zip(*per_model, strict=True)]
        return [c.to_original(self.image_size, size) for c, size in zip(found, original_sizes, strict=True)]

    def finish(self, patient_id: str, found: Candidates, original_size: tuple[int, int],
               postprocess: PostProcess | None = None) -> Detection:
        """Return the Detection of one image's candidates (in its own pixels) after post-processing."""
        pp = postprocess or self.postprocess
        boxes, scores, gate = found
        kept, kept_scores = postprocess_boxes(boxes, scores, pp, gate)
        return Detection(patient_id, kept, kept_scores, image_score(boxes, scores, pp, gate), original_size, gate)

    def detect_tensors(self, patient_ids: list[str], tensors: list[torch.Tensor],
                       original_sizes: list[tuple[int, int]], *, settings: InferenceSettings | None = None,
                       postprocess: PostProcess | None = None) -> list[Detection]:
        """Return Detections for images already prepared by :func:`image_tensor` (a batch)."""
        raw = self.candidates(tensors, original_sizes, settings, postprocess)
        return [self.finish(pid, found, size, postprocess)
                for pid, found, size in zip(patient_ids, raw, original_sizes, strict=True)]

    def detect(self, source: str | Path | bytes | DicomImage | np.ndarray, name: str | None = None, *,
               settings: InferenceSettings | None = None, postprocess: PostProcess | None = None) -> Detection:
        """Return the Detection for one DICOM file path, its bytes, a DicomImage, or (H, W) uint8 pixels;
        ``settings`` and ``postprocess`` replace the Detector's for this call.

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
        return self.detect_tensors([pid], [image_tensor(pixels, self.image_size)], [size], settings=settings,
                                   postprocess=postprocess)[0]


STALE = "was made from other weights (or by another pneumodet)"


def choose_backend(model, run: Path, checkpoint: Path, engine: str, channels_last: bool = False):
    """Return the backend that runs ``model``: ONNX Runtime if ``engine`` asks for it (auto: when exported for these
    weights and usable), else PyTorch (on a GPU if there is one)."""
    from pneumodet import onnx_runtime

    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if engine == "torch":
        return TorchBackend(model, device, channels_last)
    state = onnx_runtime.engine_state(run, checkpoint)
    if engine == "onnx":
        if state != "ready":
            problem = "no ONNX export" if state == "missing" else f"the ONNX export {STALE}"
            raise UserError(f"{run}: {problem}; run pneumodet export {run}")
        if torch.cuda.is_available():
            raise UserError("the ONNX engine runs on the CPU; with a GPU use --engine torch")
        return onnx_runtime.OnnxBackend(model, run)
    if state == "stale":
        warnings.warn(f"{run}: the ONNX export {STALE}; predicting with PyTorch (pneumodet export {run} renews it)",
                      stacklevel=3)
    usable = state == "ready" and device == "cpu" and importlib.util.find_spec("onnxruntime")
    return onnx_runtime.OnnxBackend(model, run) if usable else TorchBackend(model, device, channels_last)


def load_detector(run: str | Path | list, *, overrides: dict | None = None, hflip_tta: bool | None = None,
                  tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
                  box_vote: bool | None = None, engine: str | None = None, use_tuning: bool = True) -> Detector:
    """Return the Detector of a trained run folder: the weights its ``train.checkpoint`` chose, and its settings
    resolved once (:func:`pneumodet.settings.resolve`: the config, then evaluate's tuning, then these arguments).

    ``run`` may also be a folds folder (``train --folds K``: an ensemble of its K runs, with the post-processing
    ``evaluate`` tuned on their out-of-fold predictions) or a list of run folders (an ensemble with the
    first one's post-processing).
    ``overrides``: post-processing settings to replace (score_threshold, nms_iou, max_boxes, shrink,
    gate_threshold); ``hflip_tta``, ``tta_scales``, ``box_refine``, ``box_vote``: the inference settings
    (:class:`pneumodet.settings.InferenceSettings`); ``engine``: auto, torch or onnx (default: the run's
    ``predict.engine``). ``use_tuning=False`` ignores metrics.json and starts from the config's settings
    (evaluate, which writes metrics.json, starts there, and so can repair a damaged one).
    """
    runs = list(run) if isinstance(run, list | tuple) else [Path(run)]
    if not runs:
        raise UserError("no run folder given")
    if len(runs) == 1 and is_folds(runs[0]):
        tuned_at, runs = RunPaths(Path(runs[0])), fold_runs(runs[0])
    else:
        tuned_at = find_run(runs[0])
    loaded = [load_trained(r) for r in runs]
    _, config, info = loaded[0]
    for (_, other, _), r in zip(loaded[1:], runs[1:], strict=True):
        if other.data.image_size != config.data.image_size:
            raise UserError(f"{r}: trained at {other.data.image_size} px, {runs[0]} at "
                            f"{config.data.image_size} px; an ensemble needs one input size")
    saved = read_tuning(tuned_at.metrics_json, tuned_at.root) if use_tuning else {}
    settings, pp = resolve(config.predict, saved, tuned_at.metrics_json, overrides=overrides, hflip_tta=hflip_tta,
                           tta_scales=tta_scales, box_refine=box_refine, box_vote=box_vote)
    backends = [choose_backend(model, Path(r), Path(its_info["path"]), engine or its_config.predict.engine,
                               its_config.predict.channels_last)
                for (model, its_config, its_info), r in zip(loaded, runs, strict=True)]
    if settings.hflip_tta and config.augment.hflip_p == 0:
        warnings.warn(f"{runs[0]}: flip TTA on a model trained without flips (augment.hflip_p=0) shows it images "
                      "unlike any it learnt from; on the synthetic variants it lowered test RSNA mAP every time "
                      "(docs/benchmarks-history.md)", stacklevel=2)
    if len(loaded) > 1:
        info = {**info, "ensemble": [str(r) for r in runs]}
    return Detector(backends, config, settings, pp, paths=tuned_at, info=info)
