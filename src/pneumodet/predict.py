"""``pneumodet predict``: every DICOM in a folder -> a Kaggle submission and a per-box CSV (``NAME.boxes.csv``)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pneumodet.data.cache import read_for_cache
from pneumodet.detector import Detection, Detector, image_tensor, load_detector
from pneumodet.errors import UserError
from pneumodet.files import OutputError, check_output_dir, check_output_file
from pneumodet.io.dicom import DicomError, folder_images
from pneumodet.postprocess import PostProcess
from pneumodet.report.submission import write_submission_and_boxes


class DicomFolder(Dataset):
    """Decoded, resized DICOMs; an unreadable file yields its error instead of an image."""

    def __init__(self, files: list[Path], size_px: int):
        self.files, self.size_px = files, size_px

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            image = read_for_cache(path, self.size_px)
            return path.stem, image_tensor(image.pixels, self.size_px), image.original_size, None
        except DicomError as exc:
            return path.stem, None, None, exc.reason
        except Exception as exc:  # one bad file must never cost the submission: an empty row, named on stderr
            return path.stem, None, None, f"cannot read ({type(exc).__name__}: {exc})"[:200]


@dataclass(frozen=True)
class PredictSummary:
    submission: Path
    boxes_csv: Path
    images: int
    unreadable: int
    with_boxes: int
    postprocess: PostProcess
    dicom_sr: Path | None = None  # the folder of SRs, when asked for
    reports: int = 0
    seconds: float = 0.0  # decoding and predicting every file (not loading the model, not writing)
    backend: str = "torch"  # what ran the model: torch, onnx, onnx int8...


def predict_folder(run: str | Path | list, images_dir: str | Path, out: str | Path, *, overrides: dict | None = None,
                   hflip_tta: bool | None = None, workers: int = 2, batch_size: int | None = None,
                   dicom_sr: str | Path | None = None, engine: str | None = None,
                   progress: bool = True) -> PredictSummary:
    """Predict every .dcm in ``images_dir``; write ``out`` (submission) and the per-box table beside it.

    ``run``: a run folder, a folds folder or a list of run folders (an ensemble; see :func:`load_detector`).
    ``dicom_sr``: a folder that receives one DICOM Structured Report per readable image (``ID.sr.dcm``).
    ``engine``: auto, torch or onnx (see :func:`pneumodet.detector.load_detector`).
    """
    images_dir, out = Path(images_dir), Path(out)
    files = folder_images(images_dir, say="predict")[0]
    check_output_file(out)
    found_by_id, seconds, reports, detector = _predict_share(
        run, files, overrides=overrides, hflip_tta=hflip_tta, workers=workers, batch_size=batch_size,
        dicom_sr=dicom_sr, engine=engine, progress=progress)
    return write_outputs(files, found_by_id, out, images_dir, seconds, reports, detector, dicom_sr)


def _predict_share(run, files: list[Path], *, overrides=None, hflip_tta=None, workers=2, batch_size=None,
                   dicom_sr=None, engine=None, progress=True):
    """Predict ``files`` (and write their SRs); return (patient_id -> Detection, seconds, SRs written, detector)."""
    if dicom_sr is not None:
        check_output_dir(dicom_sr)
    detector = load_detector(run, overrides=overrides, hflip_tta=hflip_tta, engine=engine)
    found_by_id, seconds = predict_files(detector, files, workers, batch_size, progress)
    reports = 0 if dicom_sr is None else write_reports(files, found_by_id, dicom_sr, run_name(run), progress)
    return found_by_id, seconds, reports, detector


def predict_files(detector: Detector, files: list[Path], workers: int = 2, batch_size: int | None = None,
                  progress: bool = True, unreadable: str = "predict: {}; empty prediction written"):
    """Return (patient_id -> Detection of every readable file, seconds); an unreadable file gets one stderr line,
    ``unreadable`` with the file and its reason in place of ``{}``."""
    # workers decode the next batches while the model predicts this one; on a GPU from pinned memory
    loader = DataLoader(DicomFolder(files, detector.image_size), num_workers=workers, collate_fn=lambda b: b,
                        batch_size=batch_size or detector.config.predict.batch_size,
                        pin_memory=torch.cuda.is_available())
    found_by_id: dict[str, Detection] = {}
    start = time.perf_counter()
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        for pid, _, _, reason in batch:
            if reason is not None:
                print("pneumodet " + unreadable.format(f"{pid}.dcm: {reason}"), file=sys.stderr)
        good = [item for item in batch if item[1] is not None]
        if good:
            pids, tensors, sizes, _ = zip(*good, strict=True)
            for found in detector.detect_tensors(list(pids), list(tensors), list(sizes)):
                found_by_id[found.patient_id] = found
    return found_by_id, time.perf_counter() - start


def predict_distributed(run, images_dir: str | Path, out: str | Path, *, devices: int, num_nodes: int = 1,
                        **kwargs) -> PredictSummary | None:
    """:func:`predict_folder` over ``devices`` processes per node (and ``num_nodes`` nodes), through Lightning's
    launcher: each process predicts every world-size-th file, rank 0 gathers the shares and writes one
    submission (and returns its summary; the other processes return None). SRs are written by each process."""
    from pneumodet.training.distributed import is_follower, launch

    images_dir, out = Path(images_dir), Path(out)
    # every process lists; rank 0 says what it left out
    files = folder_images(images_dir, say=None if is_follower() else "predict")[0]
    check_output_file(out)
    processes = launch(devices, num_nodes)
    rank, world = processes.rank, processes.world
    progress = kwargs.pop("progress", True) and rank == 0
    found_by_id, seconds, reports, detector = _predict_share(run, files[rank::world], progress=progress, **kwargs)
    try:
        shares = processes.gather((found_by_id, seconds, reports))
    finally:
        processes.close()
    if shares is None:
        return None
    merged = {pid: found for share in shares for pid, found in share[0].items()}
    return write_outputs(files, merged, out, images_dir, max(s[1] for s in shares), sum(s[2] for s in shares),
                         detector, kwargs.get("dicom_sr"))


def write_outputs(files: list[Path], found_by_id: dict[str, Detection], out: Path, images_dir: Path, seconds: float,
                  reports: int, detector: Detector, dicom_sr) -> PredictSummary:
    """Write the submission and the per-box table of every file (no Detection: unreadable, an empty row); return
    the summary."""
    nothing = (np.zeros((0, 4)), np.zeros(0))
    ordered = {f.stem: (found_by_id[f.stem].boxes_orig_xyxy, found_by_id[f.stem].scores) if f.stem in found_by_id
               else nothing for f in files}
    unreadable = len(files) - len(found_by_id)
    _, boxes_csv = write_submission_and_boxes(out, boxes_csv_for(out), ordered)
    if unreadable == len(files):
        raise UserError(f"{images_dir}: none of the {len(files)} .dcm files could be read (reasons above); "
                        f"{out} has only empty rows")
    return PredictSummary(out, boxes_csv, len(files), unreadable, sum(len(s) > 0 for _, s in ordered.values()),
                          detector.postprocess, None if dicom_sr is None else Path(dicom_sr), reports, seconds,
                          detector.backend)


def write_reports(files: list[Path], found_by_id: dict[str, Detection], out_dir: str | Path, name: str,
                  progress: bool = True) -> int:
    """Write a DICOM SR per predicted image (an unreadable one has none: it was not read); return how many."""
    from pneumodet.report.dicom_sr import sr_path, write_sr

    written = 0
    for path in tqdm([f for f in files if f.stem in found_by_id], desc="DICOM SR", unit="file", disable=not progress):
        found = found_by_id[path.stem]
        try:
            write_sr(path, sr_path(out_dir, path.stem), found.boxes_orig_xyxy, found.scores, found.image_score,
                     run_name=name)
            written += 1
        except OutputError:  # the folder is full or read-only: every report after this one would fail too
            raise
        except UserError as exc:  # one bad header must not cost the other reports
            print(f"pneumodet predict: {exc}; no SR written", file=sys.stderr)
        except Exception as exc:  # a header highdicom refuses in a way not foreseen: that file only
            print(f"pneumodet predict: {path.name}: no SR written ({type(exc).__name__}: {exc})"[:300], file=sys.stderr)
    return written


def run_name(run) -> str:
    """Return a short name of what predicted: the run folder's name, or the names of an ensemble's runs."""
    runs = run if isinstance(run, list | tuple) else [run]
    return "+".join(Path(r).name for r in runs)[:64]


def boxes_csv_for(submission: Path) -> Path:
    """Return the per-box table written beside a submission: ``sub.csv`` -> ``sub.boxes.csv``."""
    return submission.with_name(f"{submission.stem}.boxes.csv")
