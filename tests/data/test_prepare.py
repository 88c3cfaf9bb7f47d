import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pneumodet.data.cache import open_cache
from pneumodet.data.prepare import prepare
from pneumodet.errors import UserError
from pneumodet.io.labels import read_labels
from pneumodet.io.layout import TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS
from tests.conftest import gradient


@pytest.fixture
def messy(tmp_path, synth_data, make_dicom):
    """The synthetic set plus one of each kind of bad input."""
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    images = data / TRAIN_IMAGES
    good = sorted(images.glob("*.dcm"))
    blob = good[0].read_bytes()
    (images / "truncated.dcm").write_bytes(blob[: len(blob) // 2])
    (images / "notdicom.dcm").write_text("hello\n" * 50)
    header = bytearray(good[2].read_bytes())  # PatientAge's VR "AS" becomes "A\xac": pydicom cannot convert it
    at = header.index(b"\x10\x00\x10\x10AS")
    header[at + 5] = 0xAC
    (images / "badheader.dcm").write_bytes(bytes(header))
    make_dicom("blank", np.full((64, 64), 7, np.uint8), folder=images)
    make_dicom("unlabelled", folder=images)
    make_dicom("wide", gradient(512, 1024), folder=images)
    labels = (data / TRAIN_LABELS).read_text()
    labels += "truncated,,,,,0\nnotdicom,,,,,0\nblank,,,,,0\nghost,,,,,0\nbadheader,,,,,0\n"
    labels += "wide,900,100,300,200,1\nwide,100,100,200,100,1\nwide,1100,10,50,50,1\n"
    labels += f"{good[1].stem},10,10,-5,30,1\n"
    (data / TRAIN_LABELS).write_text(labels)
    good[3].rename(good[3].with_suffix(".DCM"))  # still an image: the suffix's case does not matter
    shutil.copy(good[4], images / f"._{good[4].name}")  # a macOS resource copy: not an image, not counted
    shutil.copy(good[5], good[5].with_suffix(".DCM"))  # the same patientId twice: one image, one QC line
    return data


def test_qc_reports_each_problem_and_goes_on(messy, tmp_path, synth_data):
    out = tmp_path / "cache"
    result = prepare(messy, out, size_px=64, progress=False, workers=2)
    qc = pd.read_csv(out / "qc.csv", dtype=str).fillna("")
    assert list(qc.columns) == ["patient_id", "file", "problem", "detail"]
    found = set(zip(qc["patient_id"], qc["problem"], strict=True))
    assert ("truncated", "unreadable file") in found
    assert ("notdicom", "unreadable file") in found
    assert ("badheader", "unreadable file") in found
    detail = dict(zip(qc["patient_id"], qc["detail"], strict=False))
    assert detail["truncated"].startswith("truncated file") and "corrupt header" in detail["badheader"]
    # an unreadable file is not also "label without image"
    assert {pid for pid, problem in found if problem == "label without image"} == {"ghost"}
    assert ("blank", "blank image") in found
    assert ("ghost", "label without image") in found
    assert ("unlabelled", "image without label") in found
    assert ("wide", "box outside image") in found
    upper = {p.stem: p.with_suffix(".dcm").exists() for p in (messy / TRAIN_IMAGES).glob("*.DCM")}
    assert sorted(upper.values()) == [False, True]  # one .DCM alone, one beside its .dcm
    repeated = [pid for pid, twin in upper.items() if twin]
    assert [pid for pid, problem in found if problem == "repeated patientId"] == repeated
    summary = json.loads((out / "qc.json").read_text())
    assert summary == result.summary
    # the image given a Target=1 row with a negative height (a negative in the synthetic labels): no usable box
    # and a conflicting target, so it is left out rather than trained as a negative
    left_out = sorted((synth_data / TRAIN_IMAGES).glob("*.dcm"))[1].stem
    assert {problem for pid, problem in found if pid == left_out} == {
        "non-positive box size", "conflicting target", "positive without a usable box"}
    assert summary["images"] == 36 and summary["readable"] == 32 and summary["usable"] == 30
    assert summary["sizes"] == {"1024x1024": 29, "1024x512": 1}
    assert summary["problems"]["unreadable file"] == 3
    assert set(summary["transfer_syntaxes"]) == {"1.2.840.10008.1.2.4.50"}
    cache = open_cache(out, 64)
    assert len(cache.images) == 30
    assert not {"truncated", "notdicom", "blank", "unlabelled", "badheader"} & set(cache.images["patient_id"])
    alone = next(pid for pid, twin in upper.items() if not twin)
    assert alone in set(cache.images["patient_id"]) and alone not in set(qc["patient_id"])
    assert repeated[0] in set(cache.images["patient_id"])


def test_boxes_scale_with_the_image(messy, tmp_path):
    from pneumodet.data.dataset import PneumoniaDataset

    out = tmp_path / "cache"
    prepare(messy, out, size_px=64, progress=False, workers=1)
    dataset = PneumoniaDataset(out, 64)
    index = dataset.records.index[dataset.records["patient_id"] == "wide"][0]
    image, target = dataset[index]
    assert image.shape == (1, 64, 64)
    # the 1024x512 image: x scale 1/16, y scale 1/8; 900+300 clipped to 1024; the box at x=1100 dropped
    assert target["boxes"].tolist() == [[900 / 16, 100 / 8, 1024 / 16, 300 / 8], [100 / 16, 100 / 8, 300 / 16, 200 / 8]]
    assert target["masks"].shape == (2, 64, 64)
    assert dataset.boxes_orig_xywh(index).tolist() == [[900, 100, 124, 200], [100, 100, 200, 100]]
    # a synthetic positive: cached box = original * 64/1024
    labels = read_labels(messy / TRAIN_LABELS)
    pid = next(p for p, a in labels.annotations.items() if a.positive and p in set(dataset.records["patient_id"])
               and len(a.boxes_xywh) == len(dataset.boxes_orig_xywh(int(np.flatnonzero(dataset.records["patient_id"] == p)[0]))))
    i = int(np.flatnonzero(dataset.records["patient_id"] == pid)[0])
    x, y, w, h = labels.annotations[pid].boxes_xywh[0]
    assert np.allclose(dataset[i][1]["boxes"][0].numpy(), np.array([x, y, x + w, y + h]) / 16, atol=1e-4)


def test_cached_pixels_match_a_resized_decode(synth_data, tmp_path):
    from PIL import Image

    from pneumodet.io.dicom import read_dicom

    out = tmp_path / "cache"
    prepare(synth_data, out, size_px=128, progress=False, workers=1)
    cache = open_cache(out, 128)
    record = cache.images.iloc[0]
    full = read_dicom(synth_data / TRAIN_IMAGES / f"{record['patient_id']}.dcm").pixels
    expected = np.asarray(Image.fromarray(full).resize((128, 128), Image.BILINEAR)).astype(int)
    assert np.abs(cache.pixels[int(record["row"])].astype(int) - expected).mean() < 3


def test_cache_is_reused_or_rebuilt(synth_data, tmp_path):
    out = tmp_path / "cache"
    first = prepare(synth_data, out, size_px=64, progress=False, workers=1)
    assert not first.reused
    stamp = (first.cache_dir / "images.npy").stat().st_mtime_ns
    again = prepare(synth_data, out, size_px=64, val_fraction=0.3, progress=False, workers=1)
    assert again.reused and (again.cache_dir / "images.npy").stat().st_mtime_ns == stamp
    bigger = prepare(synth_data, out, size_px=96, progress=False, workers=1)
    assert not bigger.reused and bigger.cache_dir != first.cache_dir
    assert open_cache(out, 64).pixels.shape[1:] == (64, 64)
    assert open_cache(out, 96).pixels.shape[1:] == (96, 96)


def test_changed_sources_rebuild(synth_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    out = tmp_path / "cache"
    prepare(data, out, size_px=64, progress=False, workers=1)
    victim = sorted((data / TRAIN_IMAGES).glob("*.dcm"))[0]
    victim.unlink()
    result = prepare(data, out, size_px=64, progress=False, workers=1)
    assert not result.reused
    assert result.summary["problems"]["label without image"] == 1


def test_interrupted_prepare_leaves_no_complete_cache(synth_data, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "cache"
    monkeypatch.setattr("pneumodet.data.prepare.decode_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(synth_data, out, size_px=64, progress=False)
    assert list(out.iterdir()) == []  # no temporary folder left, nothing that looks complete
    with pytest.raises(UserError, match="no complete train cache"):
        open_cache(out, 64)


def test_nothing_usable_is_a_user_error(tmp_path):
    data = tmp_path / "data"
    (data / TRAIN_IMAGES).mkdir(parents=True)
    (data / TRAIN_IMAGES / "a.dcm").write_text("nope")
    (data / TRAIN_LABELS).write_text("patientId,x,y,width,height,Target\na,,,,,0\n")
    with pytest.raises(UserError, match="no usable images"):
        prepare(data, tmp_path / "cache", size_px=64, progress=False, workers=1)
    qc = pd.read_csv(tmp_path / "cache" / "qc.csv")  # the reasons are still written down
    assert qc[["patient_id", "problem"]].values.tolist() == [["a", "unreadable file"]]


def test_test_images_prepare_without_labels(synth_data, tmp_path):
    out = tmp_path / "cache"
    result = prepare(synth_data, out, size_px=64, subset="test", progress=False, workers=1)
    assert result.split_csv is None and (out / "qc_test.json").is_file()
    cache = open_cache(out, 64, subset="test")
    assert set(cache.images["patient_id"]) == {p.stem for p in (synth_data / TEST_IMAGES).glob("*.dcm")}
    assert cache.boxes.empty


def test_split_file_has_every_usable_image_once(synth_data, tmp_path):
    out = tmp_path / "cache"
    prepare(synth_data, out, size_px=64, val_fraction=0.2, progress=False, workers=1)
    split = pd.read_csv(out / "split.csv")
    assert list(split.columns) == ["patient_id", "split", "fold"]
    assert split["patient_id"].is_unique and len(split) == 30
    assert set(split["split"]) == {"train", "val"} and sorted(split["fold"].unique()) == [0, 1, 2, 3, 4]


def test_the_default_val_share_grows_for_small_sets_so_about_50_images_tune_thresholds(synth_data, tmp_path):
    from pneumodet.data.prepare import auto_val_fraction

    assert auto_val_fraction(26684) == 0.1  # the real training set: 10 %
    assert auto_val_fraction(240) == pytest.approx(50 / 240)  # issue 8's small sets: 50 images, not 24
    assert auto_val_fraction(30) == 0.25  # never more than a quarter
    result = prepare(synth_data, tmp_path / "cache", size_px=64, progress=False, workers=1)
    split = pd.read_csv(tmp_path / "cache" / "split.csv")
    assert result.val_fraction == 0.25 and result.val_images == (split["split"] == "val").sum()
    assert 6 <= result.val_images <= 9 and 0 <= result.val_positives <= result.val_images
    given = prepare(synth_data, tmp_path / "cache", size_px=64, val_fraction=0.1, progress=False, workers=1)
    assert given.val_fraction == 0.1 and given.val_images < result.val_images
