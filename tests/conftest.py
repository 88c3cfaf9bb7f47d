"""Shared fixtures: tiny DICOMs and data sets built by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumodet.data.synth import synthesize
from pneumodet.io.dicom import write_dicom


def gradient(height: int = 64, width: int = 64) -> np.ndarray:
    """Return a (height, width) uint8 image that is dark on the left and bright on the right."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return np.tile(row, (height, 1))


@pytest.fixture
def make_dicom(tmp_path):
    """Return a function that writes a DICOM under tmp_path and returns its path."""

    def make(name: str = "img", pixels: np.ndarray | None = None, folder: Path | None = None, **kwargs) -> Path:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.dcm"
        write_dicom(path, gradient() if pixels is None else pixels, patient_id=name, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the Kaggle layout (shared: treat as read-only)."""
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_train=30, n_test=6, seed=3, workers=2, progress=False)
    return out
