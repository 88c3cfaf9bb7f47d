"""``load_detector(run) -> Detector``: the one path from a DICOM (path, bytes or pixels) to boxes in the
image's own pixels, with scores and the image score. ``predict``, ``serve``, ``evaluate``, the
benchmarks and the public API all go through it, so a fix to decoding, scaling or post-processing
lands once. Works without Lightning.

Spaces are in the names: ``*_cache_*`` boxes are in the model's square input (``image_size``
pixels), ``*_orig_*`` boxes in the DICOM's own Rows x Columns.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pneumodet.boxes import xyxy_to_xywh
from pneumodet.config import ENGINES, PredictConfig, RunConfig, from_dict, validate
from pneumodet.data.cache import read_for_cache, to_cache_size
from pneumodet.errors import UserError
from pneumodet.io.dicom import DicomImage
from pneumodet.postprocess import Candidates, PostProcess, image_score, postprocess
from pneumodet.predict import fuse_candidates, predictor_for, to_original
from pneumodet.runs import RunPaths, find_run, fold_runs, is_folds, load_trained


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
    resized = to_cache_size(np.asarray(pixels, dtype=np.uint8), size_px)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).unsqueeze(0).float().div_(255.0)


def _saved_evaluation(paths: RunPaths) -> dict:
    if not paths.metrics_json.is_file():
        return {}
    try:
        saved = json.loads(paths.metrics_json.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{paths.metrics_json}: not valid JSON; run pneumodet evaluate {paths.root} again") from None
    if not isinstance(saved, dict):
        raise UserError(f"{paths.metrics_json}: not a metrics file; run pneumodet evaluate {paths.root} again")
    return saved


#: what metrics.json records of the inference settings its thresholds were tuned under
INFERENCE_KEYS = ("hflip_tta", "tta_scales", "box_refine", "box_vote")


def _checked_predict(values: dict, where: Path, run: Path) -> PredictConfig:
    """Return ``values`` (predict settings read from metrics.json) as a checked PredictConfig; a one-line UserError
    naming the file otherwise (evaluate writes it whole)."""
    try:
        return validate(from_dict({"predict": values})).predict
    except UserError as exc:
        raise UserError(f"{where}: {exc}; run pneumodet evaluate {run} again") from None


def tuned_postprocess(saved: dict, fallback: PostProcess, where: Path = Path("metrics.json")) -> PostProcess:
    """Return the post-processing evaluate saved in metrics.json (``saved``, as read from ``where``), else
    ``fallback``; a one-line UserError if it is there but incomplete or out of range."""
    values = saved.get("postprocess")
    if not values:
        return fallback
    needed = {f.name for f in dataclasses.fields(PostProcess)} - {"gate_threshold"}  # older files have no gate
    if not isinstance(values, dict) or not needed <= set(values):
        missing = sorted(needed - set(values)) if isinstance(values, dict) else ["all"]
        raise UserError(f"{where}: postprocess lacks {', '.join(missing)}; run pneumodet evaluate {where.parent} "
                        "again")
    return PostProcess.from_config(_checked_predict(values, where, where.parent))


def tuned_inference(saved: dict, predict: PredictConfig, where: Path = Path("metrics.json")
                    ) -> tuple[bool, tuple[float, ...], int, bool]:
    """Return (hflip_tta, tta_scales, box_refine, box_vote) as evaluate recorded them in metrics.json (``saved``,
    as read from ``where``): they change the scores or boxes its thresholds were tuned on. Each is ``predict``'s
    where evaluate recorded none."""
    recorded = {k: saved[k] for k in INFERENCE_KEYS if saved.get(k) is not None}
    checked = _checked_predict(recorded, where, where.parent) if recorded else predict
    return tuple(getattr(checked if k in recorded else predict, k) for k in INFERENCE_KEYS)


class Detector:
    """A trained model (or an ensemble of them) with its post-processing: DICOMs in, :class:`Detection` out.

    ``model``: one model, or a list of models sharing ``config``'s input size (an ensemble: each model's
    candidates, after its own flip TTA, are merged by weighted box fusion (scored as :attr:`fused_score` says)
    and their gates averaged).
    ``postprocess`` is the run's tuned one (metrics.json) unless given; ``hflip_tta`` (TTA on or off),
    ``tta_scales`` (its sizes), ``box_refine`` (passes of the box head over its detections) and ``box_vote`` (box
    voting in its RoI heads) the run's settings unless given.
    """

    def __init__(self, model, config: RunConfig, postprocess: PostProcess, *, hflip_tta: bool | None = None,
                 tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
                 box_vote: bool | None = None, paths: RunPaths | None = None, info: dict | None = None):
        self.config, self.postprocess, self.paths, self.info = config, postprocess, paths, info or {}
        self.image_size = config.data.image_size
        models = model if isinstance(model, list | tuple) else [model]
        engines = {getattr(m, "engine", "torch") for m in models}
        self.engine = engines.pop() if len(engines) == 1 else "mixed"
        self.tta_scales = tuple(config.predict.tta_scales if tta_scales is None else tta_scales)
        self.box_refine = config.predict.box_refine if box_refine is None else box_refine
        self.box_vote = config.predict.box_vote if box_vote is None else box_vote
        self.predictors = [predictor_for(m, config, hflip_tta=hflip_tta, tta_scales=self.tta_scales,
                                         box_refine=self.box_refine, box_vote=self.box_vote) for m in models]

    def _predict(self, tensors: list[torch.Tensor]) -> list[Candidates]:
        per_model = [predictor(tensors) for predictor in self.predictors]
        if len(per_model) == 1:
            return per_model[0]
        return [fuse_candidates(list(found), score=self.fused_score) for found in zip(*per_model, strict=True)]

    @property
    def fused_score(self) -> str:
        """How an ensemble scores a fused box. With the gate applied, the mean over the models that found it: the
        thresholds were tuned on single models' (out-of-fold) scores, and the gate, not the vote, removes the
        boxes of negative images. Without it, the average over all models, so a box one model found is
        down-weighted. Measured on one 3-fold ensemble (BENCHMARKS.md): 0.560 -> 0.613 with the gate; 0.351 ->
        0.241 had the gate-off case used it too."""
        return "found" if self.postprocess.gate_threshold > 0 else "average"

    def read(self, source: str | Path | bytes | DicomImage, name: str | None = None) -> DicomImage:
        """Return the DICOM decoded as the cache decodes it (reduced-scale JPEG decode where it can)."""
        return source if isinstance(source, DicomImage) else read_for_cache(source, self.image_size, name)

    def candidates(self, tensors: list[torch.Tensor], original_sizes: list[tuple[int, int]]) -> list[Candidates]:
        """Return per image Candidates (boxes in original pixels, scores, gate): before post-processing."""
        out = []
        for found, (height, width) in zip(self._predict(tensors), original_sizes, strict=True):
            scale_x, scale_y = self.image_size / width, self.image_size / height
            out.append(found._replace(boxes_xyxy=to_original(found.boxes_xyxy, scale_x, scale_y, height, width)))
        return out

    def finish(self, patient_id: str, found: Candidates, original_size: tuple[int, int]) -> Detection:
        """Return the Detection of one image's candidates (in original pixels) after post-processing."""
        boxes, scores, gate = found
        kept, kept_scores = postprocess(boxes, scores, self.postprocess, gate)
        return Detection(patient_id, kept, kept_scores, image_score(boxes, scores, self.postprocess, gate),
                         original_size, gate)

    def detect_tensors(self, patient_ids: list[str], tensors: list[torch.Tensor],
                       original_sizes: list[tuple[int, int]]) -> list[Detection]:
        """Return Detections for images already prepared by :func:`image_tensor` (a batch)."""
        raw = self.candidates(tensors, original_sizes)
        return [self.finish(pid, found, size) for pid, found, size in zip(patient_ids, raw, original_sizes, strict=True)]

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


STALE = "was made from other weights (or by a pneumodet without its checksums)"


def use_engine(model, run: Path, checkpoint: Path, engine: str, sizes: set[int] = frozenset()):
    """Run ``model``'s convolutions in ONNX Runtime if ``engine`` asks for it (auto: when exported and usable);
    ``sizes``: the input sizes it will get (scale TTA), which an old export's fixed-size graph may not take."""
    from pneumodet import onnx_engine

    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch":
        return model
    state = onnx_engine.engine_state(run, checkpoint)
    if state == "ready" and not onnx_engine.sizes_ok(run, set(sizes)):
        problem = f"{run}: its ONNX export takes one input size and predict.tta_scales asks for more"
        if engine == "onnx":
            raise UserError(f"{problem}; run pneumodet export {run} again")
        warnings.warn(f"{problem}; predicting with PyTorch (pneumodet export {run} renews it)", stacklevel=3)
        return model
    if engine == "onnx":
        if state != "ready":
            problem = "no ONNX export" if state == "missing" else f"the ONNX export {STALE}"
            raise UserError(f"{run}: {problem}; run pneumodet export {run}")
        if torch.cuda.is_available():
            raise UserError("the ONNX engine runs on the CPU; with a GPU use --engine torch")
        return onnx_engine.attach(model, run)
    if state == "stale":
        warnings.warn(f"{run}: the ONNX export {STALE}; predicting with PyTorch (pneumodet export {run} renews it)",
                      stacklevel=3)
    usable = state == "ready" and not torch.cuda.is_available() and importlib.util.find_spec("onnxruntime")
    return onnx_engine.attach(model, run) if usable else model


def load_detector(run: str | Path | list, *, overrides: dict | None = None, hflip_tta: bool | None = None,
                  tta_scales: tuple[float, ...] | None = None, box_refine: int | None = None,
                  box_vote: bool | None = None, engine: str | None = None, use_tuning: bool = True) -> Detector:
    """Return the Detector of a trained run folder: the weights its ``train.checkpoint`` chose and its tuned
    post-processing.

    ``run`` may also be a folds folder (``train --folds K``: an ensemble of its K runs, with the post-processing
    ``evaluate`` tuned on their out-of-fold predictions) or a list of run folders (an ensemble with the
    first one's post-processing).
    ``overrides``: post-processing settings to replace (score_threshold, nms_iou, max_boxes, shrink,
    gate_threshold); ``hflip_tta``: test-time augmentation (flips, and each size of ``tta_scales``) on or off,
    and ``tta_scales``: the input sizes, multiples of the run's (default for both: as evaluate tuned them, since
    TTA changes the scores the thresholds were tuned on; else the run's config); ``box_refine``: passes of the box
    head over its own detections, and ``box_vote``: box voting on or off (default for each: as evaluate tuned
    them, else the config's); ``engine``: auto, torch or onnx (default: the run's ``predict.engine``; see
    :mod:`pneumodet.onnx_engine`). ``use_tuning=False`` ignores metrics.json and starts from the config's settings
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
    model, config, info = loaded[0]
    saved = _saved_evaluation(tuned_at) if use_tuning else {}  # metrics.json, read once
    where = tuned_at.metrics_json
    tuned_flip, tuned_scales, tuned_refine, tuned_vote = tuned_inference(saved, config.predict, where)
    hflip_tta = tuned_flip if hflip_tta is None else hflip_tta
    tta_scales = tuned_scales if tta_scales is None else tta_scales
    box_refine = tuned_refine if box_refine is None else box_refine
    box_vote = tuned_vote if box_vote is None else box_vote
    # every model of an ensemble runs at the first one's sizes (Detector gives them its settings)
    sizes = {round(config.data.image_size * s) for s in (tta_scales if hflip_tta else (1.0,))}
    for (each, its_config, its_info), r in zip(loaded, runs, strict=True):
        use_engine(each, Path(r), Path(its_info["path"]), engine or its_config.predict.engine, sizes)
    for other, r in zip(loaded[1:], runs[1:], strict=True):
        if other[1].data.image_size != config.data.image_size:
            raise UserError(f"{r}: trained at {other[1].data.image_size} px, {runs[0]} at "
                            f"{config.data.image_size} px; an ensemble needs one input size")
    pp = tuned_postprocess(saved, PostProcess.from_config(config.predict), where)
    pp = replace(pp, **{k: v for k, v in (overrides or {}).items() if v is not None})
    if hflip_tta and config.augment.hflip_p == 0:
        warnings.warn(f"{runs[0]}: flip TTA on a model trained without flips (augment.hflip_p=0) shows it images "
                      "unlike any it learnt from; on the synthetic variants it lowered test RSNA mAP every time "
                      "(BENCHMARKS.md)", stacklevel=2)
    if len(loaded) > 1:
        info = {**info, "ensemble": [str(r) for r in runs]}
    return Detector([m for m, _, _ in loaded], config, pp, hflip_tta=hflip_tta, tta_scales=tta_scales,
                    box_refine=box_refine, box_vote=box_vote, paths=tuned_at, info=info)
