"""A synthetic data set in exactly the Kaggle RSNA layout, with the real data's statistics.

Variants (``--variant``) draw from different distributions, so a recipe can be checked on data it was
not tuned on: ``default`` (the statistics below), ``wide`` (far more variety in anatomy, exposure, noise,
blur, opacity size, strength and texture, devices, markers, MONOCHROME1 files), ``oblique`` (rotated
patients: one lung foreshortened, the body off centre, tilted films), ``subtle`` (faint to moderate, soft-edged
opacities, half of them patchy, some in both lungs), and three that no recipe is ever chosen
on (:data:`HELD_OUT`): ``shifted`` (smaller, fainter, patchier opacities, as the hidden test's 0.78x boxes;
noisier, flatter films; more positives), ``portable`` (bedside films: rotated, collimated, under- or
over-exposed, burned-in text and markers, tubes and lines) and ``faint`` (faint opacities made of patches,
often in both lungs, box sizes spread over the real data's range). ``mix`` draws each image's variant from all
seven, and a comma-separated list (``default,wide,oblique``) from those it names.

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

from pneumodet.boxes import as_boxes, clip_xyxy, xyxy_to_xywh
from pneumodet.files import atomic_path, write_text_atomic
from pneumodet.io.dicom_write import write_dicom
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
class Style:
    """The ranges one variant draws from: (low, high) pairs are uniform, per image."""

    p_positive: tuple[float, float] = (P_POSITIVE["AP"], P_POSITIVE["PA"])  # AP, PA
    body: tuple[float, float] = (0.40, 0.47)  # half-width of the body, in image widths
    lung_rx: tuple[float, float] = (0.11, 0.15)
    lung_ry: tuple[float, float] = (0.24, 0.30)
    box_width_px: tuple[float, float] = (200, 200)  # median opacity width in 1024 px (per image)
    opacity: tuple[float, float] = (0.14, 0.28)  # strength
    texture_cells: tuple[int, ...] = (24,)  # coarser (8) to patchier (48) texture
    softness: tuple[float, float] = (0.18, 0.18)
    contrast: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.85, 1.15)
    noise: tuple[float, float] = (0.012, 0.012)
    blur_px: tuple[float, float] = (0.0, 0.0)  # detector unsharpness, at 512 px
    p_lines_pa: float = 0.0  # devices on PA films too
    p_marker: float = 0.0  # bright L/R marker in a corner
    p_monochrome1: float = 0.0  # stored inverted, as some vendors do
    # the fields below draw nothing at their defaults, so the variants above keep their images
    oblique: tuple[float, float] = (1.0, 1.0)  # width of the far lung against the near one (rotated patient)
    film_rotation_deg: float = 0.0  # the whole film turned by up to +- this many degrees, boxes with it
    p_collimation: float = 0.0  # collimator edges: a bright or dark band along some sides
    p_text: float = 0.0  # burned-in text in a corner (the scanner's or the technologist's)
    exposure: tuple[float, float] = (0.0, 0.0)  # added before contrast: under- (< 0) or over-exposed (> 0)
    p_patchy: float = 0.0  # an opacity made of 2-4 patches instead of one blob
    p_bilateral: float = 0.0  # a positive with one box has a second in the other lung


VARIANTS = {
    "default": Style(),
    "wide": Style(p_positive=(0.45, 0.15), body=(0.33, 0.49), lung_rx=(0.09, 0.17), lung_ry=(0.20, 0.33),
                  box_width_px=(130, 260), opacity=(0.08, 0.30), texture_cells=(8, 16, 24, 48), softness=(0.10, 0.30),
                  contrast=(0.6, 1.3), gamma=(0.6, 1.5), noise=(0.004, 0.04), blur_px=(0.0, 2.0), p_lines_pa=0.2,
                  p_marker=0.5, p_monochrome1=0.1),
    "shifted": Style(p_positive=(0.5, 0.2), box_width_px=(120, 170), opacity=(0.06, 0.18), texture_cells=(48,),
                     softness=(0.22, 0.32), contrast=(0.65, 0.95), gamma=(0.9, 1.3), noise=(0.02, 0.05),
                     blur_px=(0.5, 1.5), p_lines_pa=0.5, p_marker=0.3),
    "oblique": Style(oblique=(0.55, 1.0), film_rotation_deg=6.0, body=(0.36, 0.47), contrast=(0.7, 1.2),
                     noise=(0.008, 0.03), p_marker=0.3, p_text=0.3),
    # faint to moderate, soft-edged opacities, often patchy or in both lungs, on default's films; added to the
    # packaged start's pretraining set it scored within the noise (docs/benchmarks-history.md: "A pretraining set
    # with faint, soft and patchy opacities")
    "subtle": Style(box_width_px=(100, 260), opacity=(0.05, 0.22), softness=(0.12, 0.38), noise=(0.006, 0.03),
                    p_patchy=0.5, p_bilateral=0.3),
    "portable": Style(p_positive=(0.45, 0.15), box_width_px=(150, 250), opacity=(0.10, 0.26), contrast=(0.55, 1.05),
                      gamma=(0.8, 1.3), noise=(0.01, 0.04), blur_px=(0.0, 1.0), p_lines_pa=0.7, p_marker=0.7,
                      film_rotation_deg=8.0, p_collimation=0.7, p_text=0.6, exposure=(-0.12, 0.12)),
    "faint": Style(p_positive=(0.5, 0.25), box_width_px=(110, 250), opacity=(0.05, 0.15), texture_cells=(24, 48),
                   softness=(0.2, 0.35), noise=(0.01, 0.03), p_patchy=0.6, p_bilateral=0.5),
}
#: the variants no recipe is chosen on: they only report how a recipe does on data it never shaped
HELD_OUT = ("shifted", "portable", "faint")
#: each image draws its variant from all of them (held-out ones included: train on ``mix`` and any held-out
#: figure is no longer unseen)
MIX = "mix"


def _draw(rng, bounds: tuple[float, float]) -> float:
    """Return a uniform draw in ``bounds``; a fixed value draws nothing (the default's stream is unchanged)."""
    return float(bounds[0]) if bounds[0] == bounds[1] else float(rng.uniform(*bounds))


@dataclass(frozen=True)
class Case:
    annotation: Annotation
    view: str
    sex: str
    age: int
    variant: str = "default"  # the one drawn from, under ``mix``


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


def _sample_boxes(rng, n: int, lungs: list[tuple[float, float, float, float]], width_px: float = 200) -> np.ndarray:
    """Return (n, 4) non-overlapping xywh boxes in 1024-px space whose centres lie in the lungs."""
    order = rng.permutation(2) if n < 2 else np.arange(2)
    boxes: list[list[float]] = []
    for k in range(n):
        cx, cy, rx, ry = lungs[order[k % 2]]
        for _ in range(30):
            # real widths 40-528 (mean 218), heights 45-942 (mean 329)
            w = float(np.clip(rng.lognormal(np.log(width_px), 0.35), 40, 528))
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


def draw_case(rng: np.random.Generator, view: str, label_class: str, style: Style = VARIANTS["default"]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Return ((1024, 1024) uint8 image, (N, 4) xywh boxes) for one synthetic radiograph."""
    ap = view == "AP"
    tilt = rng.normal(0, 0.015)
    mid = 0.5 + rng.normal(0, 0.02)
    body_rx = rng.uniform(*style.body)
    body = _soft_ellipse(mid, 0.55, body_rx, rng.uniform(0.55, 0.65) * body_rx / 0.435, 0.05, 3.0)
    image = 0.08 + 0.42 * body
    lungs = []
    lung_masks = []
    # a rotated patient: the far lung narrower and nearer the spine, which moves off centre
    far, narrow = (int(rng.integers(2)) * 2 - 1, rng.uniform(*style.oblique)) if style.oblique != (1.0, 1.0) else (0, 1.0)
    for side in (-1, 1):
        cx = mid + side * rng.uniform(0.16, 0.21) * body_rx / 0.435
        cy = rng.uniform(0.42, 0.48) + side * tilt
        rx, ry = rng.uniform(*style.lung_rx), rng.uniform(*style.lung_ry)
        if side == far:
            cx, rx = mid + (cx - mid) * (0.5 + 0.5 * narrow), rx * narrow
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
    spine = mid + far * (1 - narrow) * 0.08  # the spine seen nearer the far side when the patient is rotated
    image += 0.25 * np.exp(-(((X - spine) / rng.uniform(0.035, 0.05)) ** 2)) * body  # spine, mediastinum
    heart_r = rng.uniform(0.13, 0.16) * (1.15 if ap else 1.0)
    heart = _soft_ellipse(mid + 0.05, rng.uniform(0.62, 0.66), heart_r, heart_r * 0.75, 0.12)
    image += 0.22 * heart
    for side in (-1, 1):  # clavicles
        y_clav = 0.16 + rng.normal(0, 0.015) + 0.25 * (X - mid) ** 2
        image += 0.10 * np.exp(-(((Y - y_clav) / 0.012) ** 2)) * (np.sign(X - mid) == side) * body
    image += 0.22 * (1 / (1 + np.exp(-(Y - 0.75 - 0.05 * _smooth_noise(rng, 4)) / 0.02))) * body  # abdomen

    n_boxes = int(rng.choice(4, p=BOX_COUNTS)) + 1 if label_class == CLASSES[0] else 0
    if n_boxes == 1 and style.p_bilateral and rng.random() < style.p_bilateral:
        n_boxes = 2  # _sample_boxes puts a second box in the other lung
    boxes_xywh = _sample_boxes(rng, n_boxes, lungs, _draw(rng, style.box_width_px))
    for x, y, w, h in boxes_xywh / SIZE_PX:
        cells = int(style.texture_cells[0] if len(style.texture_cells) == 1 else rng.choice(style.texture_cells))
        texture = 0.75 + 0.25 * _smooth_noise(rng, cells)
        softness = _draw(rng, style.softness)
        if style.p_patchy and rng.random() < style.p_patchy:
            blob = _patches(rng, x, y, w, h, softness)
        else:
            blob = _soft_ellipse(x + w / 2, y + h / 2, w / 2, h / 2, softness, 2.0)
        image += rng.uniform(*style.opacity) * blob * texture * (0.35 + 0.65 * lung_mask)
    if label_class == CLASSES[1]:
        image += _draw_distractors(rng, lungs, lung_mask)
    if ap:  # portable films: devices and lower contrast
        image += _draw_lines(rng, 1 + rng.integers(0, 3))
    elif style.p_lines_pa and rng.random() < style.p_lines_pa:
        image += _draw_lines(rng, 1)
    if style.film_rotation_deg:
        image, boxes_xywh = _rotate(image, boxes_xywh, rng.uniform(-1, 1) * style.film_rotation_deg)
    if style.p_collimation and rng.random() < style.p_collimation:
        image = _collimate(rng, image, boxes_xywh)
    if style.p_marker and rng.random() < style.p_marker:
        corner_x, corner_y = rng.choice([0.06, 0.9]), rng.uniform(0.05, 0.2)
        image += 0.6 * ((np.abs(X - corner_x) < 0.02) & (np.abs(Y - corner_y) < 0.025))
    if style.p_text and rng.random() < style.p_text:
        image = np.maximum(image, _text(rng))
    contrast = rng.uniform(*style.contrast) * (0.9 if ap else 1.0)
    image = (image - image.mean()) * contrast + image.mean() + rng.normal(0, 0.03) + _draw(rng, style.exposure)
    blur = _draw(rng, style.blur_px)
    if blur > 0:
        image = _gaussian_blur(image.astype(np.float32), blur)
    image = image + rng.normal(0, _draw(rng, style.noise), image.shape).astype(np.float32)
    image = np.clip(image, 0, 1) ** rng.uniform(*style.gamma)
    small = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
    return np.asarray(small.resize((SIZE_PX, SIZE_PX), Image.BILINEAR)), boxes_xywh


def _patches(rng, x: float, y: float, w: float, h: float, softness: float) -> np.ndarray:
    """Return an opacity of 2-4 overlapping patches that together fill the box (x, y, w, h, in image widths)."""
    n = int(rng.integers(2, 5))
    blob = np.zeros((DRAW_PX, DRAW_PX), dtype=np.float32)
    # the first two patches sit in opposite corners, so the patches span the box as its reader drew it
    corners = [(0.3, 0.3), (0.7, 0.7)] if rng.random() < 0.5 else [(0.7, 0.3), (0.3, 0.7)]
    for k in range(n):
        fx, fy = corners[k] if k < 2 else (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
        blob = np.maximum(blob, _soft_ellipse(x + fx * w, y + fy * h, 0.3 * w, 0.3 * h, softness, 2.0))
    return blob


def _rotate(image: np.ndarray, boxes_xywh: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the film turned by ``degrees`` about its centre and each box around its turned ellipse."""
    turned = Image.fromarray(image.astype(np.float32), mode="F").rotate(
        degrees, resample=Image.BILINEAR, fillcolor=float(np.median(image[:8])))
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    turned_xyxy = []
    for x, y, w, h in boxes_xywh:
        cx, cy = x + w / 2 - SIZE_PX / 2, y + h / 2 - SIZE_PX / 2
        # PIL turns counter-clockwise as seen, with y pointing down
        cx, cy = cx * cos + cy * sin + SIZE_PX / 2, -cx * sin + cy * cos + SIZE_PX / 2
        half_w = np.hypot(w / 2 * cos, h / 2 * sin)
        half_h = np.hypot(w / 2 * sin, h / 2 * cos)
        turned_xyxy.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    # whole pixels, cut to the film
    return np.array(turned), xyxy_to_xywh(clip_xyxy(np.round(as_boxes(turned_xyxy)), SIZE_PX, SIZE_PX))


def _collimate(rng, image: np.ndarray, boxes_xywh: np.ndarray) -> np.ndarray:
    """Return the film with collimator bands on some sides; a band stops short of every box (the field is set
    to the lungs, and a reader boxes what the film shows)."""
    boxes = boxes_xywh / SIZE_PX
    x1, y1 = (boxes[:, 0].min(), boxes[:, 1].min()) if len(boxes) else (1.0, 1.0)
    x2, y2 = ((boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()) if len(boxes) else (0.0, 0.0)
    room = (x1, y1, 1 - x2, 1 - y2)  # left, top, right, bottom
    left, top, right, bottom = (min(rng.uniform(0.02, 0.08), r) if rng.random() < 0.6 else 0.0 for r in room)
    field = ((X > left) & (X < 1 - right) & (Y > top) & (Y < 1 - bottom)).astype(np.float32)
    shade = 0.95 if rng.random() < 0.5 else 0.02  # unexposed: white on film, black after some vendors' shutters
    return image * field + shade * (1 - field)


def _text(rng) -> np.ndarray:
    """Return burned-in text: 1-3 lines of bright glyph-like strokes in a corner, zero elsewhere."""
    text = np.zeros((DRAW_PX, DRAW_PX), dtype=np.float32)
    x0, y0 = rng.choice([0.03, 0.65]), rng.choice([0.03, 0.85])
    line_px, glyph_px = 9, 6
    top = int(y0 * DRAW_PX)
    for line in range(int(rng.integers(1, 4))):
        left = int(x0 * DRAW_PX)
        for _ in range(int(rng.integers(6, 16))):
            glyph = rng.random((line_px - 2, glyph_px - 1)) < 0.45
            y = top + line * (line_px + 2)
            text[y:y + line_px - 2, left:left + glyph_px - 1] = np.maximum(
                text[y:y + line_px - 2, left:left + glyph_px - 1], glyph[: DRAW_PX - y, : DRAW_PX - left] * 0.95)
            left += glyph_px
    return text


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Return ``image`` blurred by a separable Gaussian of ``sigma`` pixels (edges repeated)."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = image.shape[axis]
        image = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return image


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


def variant_pool(variant: str) -> tuple[str, ...]:
    """Return the variants ``variant`` draws each image from: itself, all of them (``mix``), or those named in a
    comma-separated list (``default,wide``)."""
    names = tuple(VARIANTS) if variant == MIX else tuple(v.strip() for v in variant.split(","))
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        from pneumodet.errors import UserError

        raise UserError(f"unknown synthetic variant {unknown[0]!r}; use one of {', '.join((*VARIANTS, MIX))}, or "
                        "several joined by commas")
    return names


def make_case(seed: int, split: str, index: int, variant: str = "default") -> tuple[Case, np.ndarray]:
    """Return the case and its (1024, 1024) uint8 pixels, a pure function of (seed, split, index, variant)."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])
    pool = variant_pool(variant)
    variant = pool[int(rng.integers(len(pool)))] if len(pool) > 1 else pool[0]
    style = VARIANTS[variant]
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < P_AP else "PA"
    if rng.random() < style.p_positive[0 if view == "AP" else 1]:
        label_class = CLASSES[0]
    else:
        label_class = CLASSES[1] if rng.random() < P_NOT_NORMAL else CLASSES[2]
    sex = "M" if rng.random() < 0.57 else "F"
    age = int(np.clip(rng.normal(47, 16.5), 1, 92))
    pixels, boxes_xywh = draw_case(rng, view, label_class, style)
    return Case(Annotation(patient_id, boxes_xywh, label_class), view, sex, age, variant), pixels


def _write_case(args: tuple[str, int, str, int, str]) -> Case:
    out, seed, split, index, variant = args
    case, pixels = make_case(seed, split, index, variant)
    folder = Path(out) / (TRAIN_IMAGES if split == "train" else TEST_IMAGES)
    share = VARIANTS[case.variant].p_monochrome1
    inverted = share and (index * 7919 + seed) % 1000 < share * 1000
    write_dicom(
        folder / f"{case.annotation.patient_id}.dcm",
        255 - pixels if inverted else pixels,
        patient_id=case.annotation.patient_id,
        photometric="MONOCHROME1" if inverted else "MONOCHROME2",
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
               workers: int | None = None, progress: bool = True, variant: str = "default") -> dict[str, list[Case]]:
    """Write a synthetic data set in the Kaggle layout under ``out``; return the cases by split."""
    variant_pool(variant)  # an unknown name is a one-line error before any file is written
    out = Path(out)
    (out / TRAIN_IMAGES).mkdir(parents=True, exist_ok=True)
    (out / TEST_IMAGES).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, "train", i, variant) for i in range(n_train)]
    jobs += [(str(out), seed, "test", i, variant) for i in range(n_test)]
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
