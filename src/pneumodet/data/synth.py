"""A synthetic data set in exactly the Kaggle RSNA layout, with the real data's statistics.

Each image is drawn at 512 px from a randomised anatomy (body, lung fields, heart, spine, ribs,
clavicles, diaphragm), upsampled to 1024 px and written as an 8-bit MONOCHROME2 JPEG Baseline
DICOM with the real tags. Positives carry 1-4 opacities inside the lung fields; 'No Lung Opacity /
Not Normal' images carry distractors (nodules, effusion, a large heart, lines and leads) without
boxes. Everything is a function of (seed, split, index), so any worker count gives the same files.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pneumodet.files import atomic_path, write_text_atomic
from pneumodet.io.dicom import write_dicom
from pneumodet.io.labels import CLASSES, Annotation, write_labels
from pneumodet.io.layout import CLASS_INFO, SAMPLE_SUBMISSION, TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS

SIZE_PX = 1024
DRAW_PX = 512
# Real data (DESIGN.md): AP 12,173 / PA 14,511 images; AP 38 % positive, PA 9 %;
# negatives 11,821 Not Normal : 8,851 Normal; boxes per positive 1: 2,614, 2: 3,266, 3: 119, 4: 13.
P_AP = 12173 / 26684
P_POSITIVE = {"AP": 0.38, "PA": 0.09}
P_NOT_NORMAL = 11821 / (11821 + 8851)
BOX_COUNTS = np.array([2614, 3266, 119, 13]) / 6012
#: not part of the Kaggle layout: the truth for the synthetic test images, for `pneumodet score`
TEST_TRUTH = "synthetic_test_labels.csv"


@dataclass(frozen=True)
class Case:
    annotation: Annotation
    view: str
    sex: str
    age: int


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    return coords[None, :], coords[:, None]  # x (1, n), y (n, 1): broadcast to (n, n)


X, Y = _grid(DRAW_PX)


def _soft_ellipse(cx, cy, rx, ry, softness=0.08, power=2.0) -> np.ndarray:
    d = (np.abs((X - cx) / rx) ** power + np.abs((Y - cy) / ry) ** power) ** (1 / power)
    return 1 / (1 + np.exp(np.minimum((d - 1) / softness, 50)))


def _smooth_noise(rng, cells: int) -> np.ndarray:
    """Return (DRAW_PX, DRAW_PX) low-frequency noise in [-1, 1]."""
    small = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((DRAW_PX, DRAW_PX), Image.BICUBIC))


def _sample_boxes(rng, n: int, lungs: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Return (n, 4) non-overlapping xywh boxes in 1024-px space whose centres lie in the lungs."""
    order = rng.permutation(2) if n < 2 else np.arange(2)
    boxes: list[list[float]] = []
    for k in range(n):
        cx, cy, rx, ry = lungs[order[k % 2]]
        for _ in range(30):
            # real widths 40-528 (mean 218), heights 45-942 (mean 329)
            w = float(np.clip(rng.lognormal(np.log(200), 0.35), 40, 528))
            h = float(np.clip(w * rng.lognormal(np.log(1.5), 0.25), 45, 942))
            w, h = min(w, 2 * rx * SIZE_PX), min(h, 2 * ry * SIZE_PX * 1.1)
            bx = (cx + rng.uniform(-0.6, 0.6) * rx) * SIZE_PX
            by = (cy + rng.uniform(-0.45, 0.6) * ry) * SIZE_PX
            box = [bx - w / 2, by - h / 2, w, h]
            box[0] = float(np.clip(box[0], 0, SIZE_PX - w))
            box[1] = float(np.clip(box[1], 0, SIZE_PX - h))
            if all(_disjoint(box, other) for other in boxes):
                boxes.append([round(v) for v in box])
                break
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _disjoint(a, b) -> bool:
    return a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def draw_case(rng: np.random.Generator, view: str, label_class: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ((1024, 1024) uint8 image, (N, 4) xywh boxes) for one synthetic radiograph."""
    ap = view == "AP"
    tilt = rng.normal(0, 0.015)
    mid = 0.5 + rng.normal(0, 0.02)
    body = _soft_ellipse(mid, 0.55, rng.uniform(0.40, 0.47), rng.uniform(0.55, 0.65), 0.05, 3.0)
    image = 0.08 + 0.42 * body
    lungs = []
    lung_masks = []
    for side in (-1, 1):
        cx = mid + side * rng.uniform(0.16, 0.21)
        cy = rng.uniform(0.42, 0.48) + side * tilt
        rx, ry = rng.uniform(0.11, 0.15), rng.uniform(0.24, 0.30)
        lungs.append((cx, cy, rx, ry))
        lung_masks.append(_soft_ellipse(cx, cy, rx, ry, 0.06, rng.uniform(2.2, 3.0)))
    lung_mask = np.maximum(*lung_masks)
    image -= 0.26 * lung_mask * (0.85 + 0.15 * _smooth_noise(rng, 6))
    # ribs: arcs that fall away from the spine, one set per lung
    for side, (_, cy, _, ry), mask in zip((-1, 1), lungs, lung_masks, strict=True):
        n_ribs = int(rng.integers(8, 11))
        for k in range(n_ribs):
            y0 = cy - ry * 1.1 + (k + 0.5) * 2.2 * ry / n_ribs
            arc = y0 - 0.6 * ((X - mid) * side - 0.25) ** 2 + 0.15 * (X - mid) * side
            image += 0.05 * np.exp(-(((Y - arc) / 0.008) ** 2)) * mask
    image += 0.25 * np.exp(-(((X - mid) / rng.uniform(0.035, 0.05)) ** 2)) * body  # spine, mediastinum
    heart_r = rng.uniform(0.13, 0.16) * (1.15 if ap else 1.0)
    heart = _soft_ellipse(mid + 0.05, rng.uniform(0.62, 0.66), heart_r, heart_r * 0.75, 0.12)
    image += 0.22 * heart
    for side in (-1, 1):  # clavicles
        y_clav = 0.16 + rng.normal(0, 0.015) + 0.25 * (X - mid) ** 2
        image += 0.10 * np.exp(-(((Y - y_clav) / 0.012) ** 2)) * (np.sign(X - mid) == side) * body
    image += 0.22 * (1 / (1 + np.exp(-(Y - 0.75 - 0.05 * _smooth_noise(rng, 4)) / 0.02))) * body  # abdomen

    n_boxes = int(rng.choice(4, p=BOX_COUNTS)) + 1 if label_class == CLASSES[0] else 0
    boxes_xywh = _sample_boxes(rng, n_boxes, lungs)
    for x, y, w, h in boxes_xywh / SIZE_PX:
        texture = 0.75 + 0.25 * _smooth_noise(rng, 24)
        blob = _soft_ellipse(x + w / 2, y + h / 2, w / 2, h / 2, 0.18, 2.0)
        image += rng.uniform(0.14, 0.28) * blob * texture * (0.35 + 0.65 * lung_mask)
    if label_class == CLASSES[1]:
        image += _draw_distractors(rng, lungs, lung_mask)
    if ap:  # portable films: devices and lower contrast
        image += _draw_lines(rng, 1 + rng.integers(0, 3))
    contrast = rng.uniform(0.85, 1.15) * (0.9 if ap else 1.0)
    image = (image - image.mean()) * contrast + image.mean() + rng.normal(0, 0.03)
    image += rng.normal(0, 0.012, image.shape).astype(np.float32)
    image = np.clip(image, 0, 1) ** rng.uniform(0.85, 1.15)
    small = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
    return np.asarray(small.resize((SIZE_PX, SIZE_PX), Image.BILINEAR)), boxes_xywh


def _draw_distractors(rng, lungs, lung_mask) -> np.ndarray:
    """Findings that are not pneumonia: nodules, an effusion, a large heart, leads."""
    extra = np.zeros((DRAW_PX, DRAW_PX), dtype=np.float32)
    kinds = rng.choice(["nodule", "effusion", "heart", "leads"], size=rng.integers(1, 3), replace=False)
    for kind in kinds:
        cx, cy, rx, ry = lungs[rng.integers(2)]
        if kind == "nodule":
            r = rng.uniform(0.01, 0.025)
            extra += 0.3 * _soft_ellipse(cx + rng.uniform(-0.5, 0.5) * rx, cy + rng.uniform(-0.5, 0.5) * ry, r, r, 0.1)
        elif kind == "effusion":
            level = cy + ry * rng.uniform(0.55, 0.8)
            extra += 0.18 * (1 / (1 + np.exp(-(Y - level) / 0.01))) * lung_mask * (np.abs(X - cx) < rx)
        elif kind == "heart":
            extra += 0.15 * _soft_ellipse(0.56, 0.62, 0.2, 0.15, 0.1)
        else:
            for _ in range(rng.integers(2, 5)):
                lx, ly = rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.7)
                extra += 0.5 * _soft_ellipse(lx, ly, 0.012, 0.012, 0.05)
    return extra


def _draw_lines(rng, count: int) -> np.ndarray:
    """Thin bright tubes and wires (portable AP films)."""
    extra = np.zeros((DRAW_PX, DRAW_PX), dtype=np.float32)
    for _ in range(count):
        x0, slope, bend = rng.uniform(0.35, 0.65), rng.uniform(-0.3, 0.3), rng.uniform(-1, 1)
        path = x0 + slope * (Y - 0.1) + bend * (Y - 0.4) ** 2
        extra += 0.35 * np.exp(-(((X - path) / 0.004) ** 2)) * (Y < rng.uniform(0.5, 0.8))
    return extra


def make_case(seed: int, split: str, index: int) -> tuple[Case, np.ndarray]:
    """Return the case and its (1024, 1024) uint8 pixels, a pure function of (seed, split, index)."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < P_AP else "PA"
    if rng.random() < P_POSITIVE[view]:
        label_class = CLASSES[0]
    else:
        label_class = CLASSES[1] if rng.random() < P_NOT_NORMAL else CLASSES[2]
    sex = "M" if rng.random() < 0.57 else "F"
    age = int(np.clip(rng.normal(47, 16.5), 1, 92))
    pixels, boxes_xywh = draw_case(rng, view, label_class)
    return Case(Annotation(patient_id, boxes_xywh, label_class), view, sex, age), pixels


def _write_case(args: tuple[str, int, str, int]) -> Case:
    out, seed, split, index = args
    case, pixels = make_case(seed, split, index)
    folder = Path(out) / (TRAIN_IMAGES if split == "train" else TEST_IMAGES)
    write_dicom(
        folder / f"{case.annotation.patient_id}.dcm",
        pixels,
        patient_id=case.annotation.patient_id,
        durable=False,  # thousands of files that the same seed makes again
        tags={
            "ViewPosition": case.view,
            "SeriesDescription": f"view: {case.view}",
            "PatientSex": case.sex,
            "PatientAge": str(case.age),
            "PixelSpacing": [0.143, 0.143] if case.view == "PA" else [0.139, 0.139],
        },
    )
    return case


def synthesize(out: str | Path, n_train: int = 200, n_test: int = 50, seed: int = 0,
               workers: int | None = None, progress: bool = True) -> dict[str, list[Case]]:
    """Write a synthetic data set in the Kaggle layout under ``out``; return the cases by split."""
    out = Path(out)
    (out / TRAIN_IMAGES).mkdir(parents=True, exist_ok=True)
    (out / TEST_IMAGES).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, "train", i) for i in range(n_train)]
    jobs += [(str(out), seed, "test", i) for i in range(n_test)]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        cases = list(tqdm(pool.map(_write_case, jobs, chunksize=4), total=len(jobs),
                          desc="synth", unit="img", disable=not progress))
    train, test = cases[:n_train], cases[n_train:]
    _write_csv_atomic(out / TRAIN_LABELS, out / CLASS_INFO, [c.annotation for c in train])
    _write_csv_atomic(out / TEST_TRUTH, None, [c.annotation for c in test])
    write_text_atomic(out / SAMPLE_SUBMISSION, "patientId,PredictionString\n" + "".join(
        f"{c.annotation.patient_id},0.5 0 0 100 100\n" for c in test))
    return {"train": train, "test": test}


def _write_csv_atomic(labels: Path, classes: Path | None, annotations: list[Annotation]) -> None:
    if classes is None:
        with atomic_path(labels) as tmp_labels:
            write_labels(annotations, tmp_labels, None)
        return
    with atomic_path(labels) as tmp_labels, atomic_path(classes) as tmp_classes:
        write_labels(annotations, tmp_labels, tmp_classes)
