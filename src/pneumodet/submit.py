"""``pneumodet predict``: every DICOM in a folder -> a Kaggle submission and a per-box CSV."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pneumodet.data.cache import to_cache_size
from pneumodet.errors import UserError
from pneumodet.files import check_output_file
from pneumodet.io.dicom import DicomError, DicomImage, read_dicom
from pneumodet.predict import PostProcess, postprocess, predictor_for, to_original
from pneumodet.report.submission import write_boxes, write_submission
from pneumodet.runs import RunPaths, find_run, load_trained


def image_tensor(image: DicomImage, size_px: int) -> torch.Tensor:
    """Return the DICOM's pixels prepared as the cache prepares them, float [1, size, size] in [0, 1]."""
    pixels = to_cache_size(image.pixels, size_px)
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).unsqueeze(0).float().div_(255.0)


class DicomFolder(Dataset):
    """Decoded, resized DICOMs; an unreadable file yields its error instead of an image."""

    def __init__(self, files: list[Path], size_px: int):
        self.files, self.size_px = files, size_px

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            image = read_dicom(path, max_decode_size=self.size_px)
            return path.stem, image_tensor(image, self.size_px), image.original_size, None
        except DicomError as exc:
            return path.stem, None, None, exc.reason
        except Exception as exc:  # one bad file must never cost the submission: an empty row, named on stderr
            return path.stem, None, None, f"cannot read ({type(exc).__name__}: {exc})"[:200]


def tuned_postprocess(paths: RunPaths, fallback: PostProcess) -> PostProcess:
    """Return the post-processing evaluate saved in metrics.json, else ``fallback``."""
    if paths.metrics_json.is_file():
        saved = json.loads(paths.metrics_json.read_text()).get("postprocess")
        if saved:
            return PostProcess(**saved)
    return fallback


@dataclass(frozen=True)
class PredictSummary:
    submission: Path
    boxes_csv: Path
    images: int
    unreadable: int
    with_boxes: int
    postprocess: PostProcess


def predict_folder(run: str | Path, images_dir: str | Path, out: str | Path, *, overrides: dict | None = None,
                   hflip_tta: bool | None = None, workers: int = 2, batch_size: int | None = None,
                   progress: bool = True) -> PredictSummary:
    """Predict every .dcm in ``images_dir``; write ``out`` (submission) and predictions.csv beside it."""
    images_dir, out = Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: images folder not found")
    files = sorted(images_dir.glob("*.dcm"))
    if not files:
        raise UserError(f"{images_dir}: no .dcm files")
    check_output_file(out)
    paths = find_run(run)
    model, config, _ = load_trained(run)
    pp = tuned_postprocess(paths, PostProcess.from_config(config.predict))
    pp = replace(pp, **{k: v for k, v in (overrides or {}).items() if v is not None})
    tta = config.predict.hflip_tta if hflip_tta is None else hflip_tta
    predictor = predictor_for(model, config, hflip_tta=tta)
    loader = DataLoader(DicomFolder(files, config.data.image_size), batch_size=batch_size or config.predict.batch_size,
                        num_workers=workers, collate_fn=lambda b: b)
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unreadable = 0
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        good = [item for item in batch if item[1] is not None]
        for pid, _, _, reason in batch:
            if reason is not None:
                unreadable += 1
                results[pid] = (np.zeros((0, 4)), np.zeros(0))
                print(f"pneumodet predict: {pid}.dcm: {reason}; empty prediction written", file=sys.stderr)
        raw = predictor([item[1] for item in good]) if good else []
        size = config.data.image_size
        for (pid, _, (height, width), _), (boxes, scores) in zip(good, raw, strict=True):
            boxes = to_original(boxes, size / width, size / height, height, width)
            results[pid] = postprocess(boxes, scores, pp)
    ordered = {f.stem: results[f.stem] for f in files}
    write_submission(out, ordered)
    boxes_csv = write_boxes(out.with_name("predictions.csv"), ordered)
    if unreadable == len(files):
        raise UserError(f"{images_dir}: none of the {len(files)} .dcm files could be read (reasons above); "
                        f"{out} has only empty rows")
    return PredictSummary(out, boxes_csv, len(files), unreadable, sum(len(s) > 0 for _, s in ordered.values()), pp)
