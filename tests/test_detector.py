"""The one inference path: scales, pixels, post-processing from metrics.json, the public API."""

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

import pneumodet
from pneumodet.candidates import CacheCandidates
from pneumodet.config_files import load_config
from pneumodet.data.cache import open_cache
from pneumodet.data.prepare import prepare
from pneumodet.detector import Detector, image_tensor, load_detector
from pneumodet.io.layout import TRAIN_IMAGES, TRAIN_LABELS
from pneumodet.postprocess import PostProcess
from pneumodet.settings import InferenceSettings
from tests.conftest import gradient

SIZE = 64


class OneBox:
    """A stand-in backend: one fixed box in the pixels of the image it is given (cache pixels)."""

    name = "stub"

    def __init__(self, box_cache_xyxy):
        self.box = np.array([box_cache_xyxy], dtype=np.float64)

    def candidates(self, images, size_px, **settings):
        return [CacheCandidates(self.box.copy(), np.array([0.9])) for _ in images]


def _stub_detector(box_cache_xyxy, **pp) -> Detector:
    config = load_config(None, [f"data.image_size={SIZE}"])
    settings = {"score_threshold": 0.5, "nms_iou": 0.5, "max_boxes": 3, "shrink": 1.0, **pp}
    return Detector([OneBox(box_cache_xyxy)], config, InferenceSettings(), PostProcess(**settings))


def test_boxes_come_back_in_a_non_square_images_own_pixels(make_dicom):
    # 200 rows x 800 columns: x scales by 800/64 = 12.5, y by 200/64 = 3.125; swapped scales would differ
    path = make_dicom("wide", gradient(200, 800))
    found = _stub_detector([8, 16, 24, 32]).detect(path)
    assert found.original_size == (200, 800)
    assert np.allclose(found.boxes_orig_xyxy, [[100, 50, 300, 100]])
    assert np.allclose(found.boxes_orig_xywh, [[100, 50, 200, 50]])
    assert found.scores.tolist() == [pytest.approx(0.9)] and found.image_score == pytest.approx(0.9)
    tall = _stub_detector([8, 16, 24, 32]).detect(make_dicom("tall", gradient(800, 200)))
    assert np.allclose(tall.boxes_orig_xyxy, [[25, 200, 75, 400]])


def test_shrink_and_threshold_are_applied_in_original_pixels(make_dicom):
    path = make_dicom("wide", gradient(200, 800))
    shrunk = _stub_detector([8, 16, 24, 32], shrink=0.5).detect(path)
    assert np.allclose(shrunk.boxes_orig_xyxy, [[150, 62.5, 250, 87.5]])
    nothing = _stub_detector([8, 16, 24, 32], score_threshold=0.95).detect(path)
    assert len(nothing.boxes_orig_xyxy) == 0 and nothing.image_score == pytest.approx(0.9)


def test_prepare_predict_and_serve_feed_the_model_the_same_pixels(trained_run, tmp_path, make_dicom, monkeypatch):
    rng = np.random.default_rng(5)
    pixels = (gradient(300, 500).astype(int) + rng.integers(-40, 40, (300, 500))).clip(0, 255).astype(np.uint8)
    data = tmp_path / "data"
    path = make_dicom("odd", pixels, folder=data / TRAIN_IMAGES)
    (data / TRAIN_LABELS).write_text("patientId,x,y,width,height,Target\nodd,,,,,0\n")
    prepare(data, tmp_path / "cache", size_px=SIZE, val_fraction=0.0, progress=False, workers=1)
    cached = np.asarray(open_cache(tmp_path / "cache", SIZE).pixels[0])

    seen: list[torch.Tensor] = []
    from pneumodet.forward import TorchBackend

    real_candidates = TorchBackend.candidates
    monkeypatch.setattr(TorchBackend, "candidates", lambda self, images, *a, **k: (
        seen.extend(im.clone() for im in images), real_candidates(self, images, *a, **k))[1])
    from pneumodet.predict import predict_folder

    predict_folder(trained_run, data / TRAIN_IMAGES, tmp_path / "sub.csv", workers=0, progress=False)
    from pneumodet.service.app import create_app

    client = TestClient(create_app(trained_run))
    assert client.post("/api/predict", files={"file": ("odd.dcm", path.read_bytes())}).status_code == 200
    assert len(seen) == 2
    as_uint8 = [np.round(t[0].numpy() * 255).astype(np.uint8) for t in seen]
    assert np.array_equal(as_uint8[0], cached), "predict fed the model other pixels than the cache holds"
    assert np.array_equal(as_uint8[1], cached), "serve fed the model other pixels than the cache holds"
    assert np.array_equal(np.round(image_tensor(cached, SIZE)[0].numpy() * 255), cached)


def test_predict_honours_the_runs_metrics_json(trained_run, synth_data, tmp_path):
    from pneumodet.io.layout import TEST_IMAGES
    from pneumodet.predict import predict_folder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    boxes = {}
    for shrink, max_boxes in ((1.0, 4), (0.5, 1)):
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["postprocess"] = {"score_threshold": 0.0, "nms_iou": 0.5, "max_boxes": max_boxes, "shrink": shrink,
                                 "gate_threshold": 0.0}
        (run / "metrics.json").write_text(json.dumps(metrics))
        out = tmp_path / f"sub-{max_boxes}.csv"
        summary = predict_folder(run, synth_data / TEST_IMAGES, out, workers=0, progress=False)
        assert summary.postprocess == PostProcess(0.0, 0.5, max_boxes, shrink)
        boxes[max_boxes] = pd.read_csv(out.with_name(f"{out.stem}.boxes.csv"))
    assert boxes[4].groupby("patient_id").size().max() > 1  # the model found several candidates...
    assert boxes[1].groupby("patient_id").size().max() == 1  # ...and max_boxes=1 from metrics.json kept one
    top = boxes[4].sort_values("score").groupby("patient_id").tail(1).set_index("patient_id")
    one = boxes[1].set_index("patient_id").loc[top.index]
    assert np.allclose(one["width"], top["width"] * 0.5, atol=0.2)  # the CSV keeps one decimal
    assert np.allclose(one["height"], top["height"] * 0.5, atol=0.2)


def test_load_detector_reads_bytes_paths_and_pixels(trained_run, synth_data):
    from pneumodet.io.layout import TEST_IMAGES

    detector = load_detector(trained_run, overrides={"score_threshold": 0.0})
    path = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0]
    by_path, by_bytes = detector.detect(path), detector.detect(path.read_bytes(), name=path.name)
    assert by_path.patient_id == by_bytes.patient_id == path.stem
    assert np.array_equal(by_path.boxes_orig_xyxy, by_bytes.boxes_orig_xyxy)
    assert len(by_path.scores) > 0  # the trained model proposes something at threshold 0
    with pytest.raises(pneumodet.UserError, match="uint8"):
        detector.detect(np.zeros((10, 10), np.float32))


def test_the_public_api_docstring_example_runs(trained_run, synth_data, tmp_path, monkeypatch):

    from pneumodet.io.layout import TEST_IMAGES

    monkeypatch.chdir(tmp_path)  # the example writes patient.sr.dcm where it runs: here, never the repository

    block = pneumodet.__doc__.split("::", 1)[1].split("\n\nNames load", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines())
    dicom = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0]
    code = code.replace('"runs/demo"', repr(str(trained_run))).replace('"patient.dcm"', repr(str(dicom)))
    namespace = {"truths_xyxy": [np.array([[0, 0, 10, 10.0]])], "boxes_xyxy": np.array([[0, 0, 10, 10.0]]),
                 "scores": np.array([0.9])}
    exec(compile(code, "pneumodet docstring", "exec"), namespace)  # noqa: S102 - our own docstring
    assert namespace["found"].patient_id == dicom.stem
    assert namespace["image"].pixels.dtype == np.uint8 and namespace["config"].train.epochs == 4
    assert namespace["score"].rsna_map == 1.0
    assert re.search(r"pneumodet\.\w+", code) and set(pneumodet.__all__) <= set(dir(pneumodet))
    assert (tmp_path / "patient.sr.dcm").is_file()


class Boxes:
    """A stand-in backend returning fixed boxes, scores and gate (cache pixels)."""

    name = "stub"

    def __init__(self, boxes, scores, gate):
        self.boxes, self.scores, self.gate = np.array(boxes, float), np.array(scores, float), gate

    def candidates(self, images, size_px, **settings):
        return [CacheCandidates(self.boxes.copy(), self.scores.copy(), self.gate) for _ in images]


def test_an_ensemble_fuses_its_models_boxes_and_averages_their_gates():
    config = load_config(None, [f"data.image_size={SIZE}"])
    first = Boxes([[10, 10, 30, 30], [40, 40, 60, 60]], [0.9, 0.6], 0.8)
    second = Boxes([[12, 10, 32, 30]], [0.7], 0.4)  # agrees on the first box only
    pp = PostProcess(score_threshold=0.0, nms_iou=0.5, max_boxes=5, shrink=1.0, gate_threshold=0.5)
    detector = Detector([first, second], config, InferenceSettings(), pp)
    (boxes, scores, gate), = detector.candidates([torch.zeros(1, SIZE, SIZE)], [(SIZE, SIZE)])
    assert gate == pytest.approx(0.6)
    # (0.9 + 0.7) / 2; with the gate on, the box one model found keeps its score (the thresholds were tuned on
    # single models' scores); without the gate, it is down-weighted: 0.6 / 2
    assert scores.tolist() == pytest.approx([0.8, 0.6])
    ungated = Detector([first, second], config, InferenceSettings(), replace(pp, gate_threshold=0.0))
    assert ungated.candidates([torch.zeros(1, SIZE, SIZE)], [(SIZE, SIZE)])[0].scores.tolist() == pytest.approx([0.8, 0.3])
    assert np.allclose(boxes[0], [10 + 2 * 0.7 / 1.6, 10, 30 + 2 * 0.7 / 1.6, 30])  # score-weighted mean
    # the averaged gate (0.6) passes a 0.5 gate; a 0.7 gate removes every box
    assert len(detector.detect(np.zeros((SIZE, SIZE), np.uint8)).scores) == 2
    strict = Detector([first, second], config, InferenceSettings(), replace(pp, gate_threshold=0.7))
    found = strict.detect(np.zeros((SIZE, SIZE), np.uint8))
    assert len(found.scores) == 0 and found.image_score == pytest.approx(0.6) and found.gate == pytest.approx(0.6)


def test_one_detector_shared_by_threads_gives_each_caller_its_own_settings(trained_run, synth_data):
    """Callers with other settings (flip TTA, its sizes, voting, refinement, post-processing) share one Detector
    at once, each getting what it gets alone; nothing of the Detector or its model changes."""
    from concurrent.futures import ThreadPoolExecutor

    from pneumodet.io.layout import TEST_IMAGES

    detector = load_detector(trained_run, overrides={"score_threshold": 0.0, "gate_threshold": 0.0})
    before = {k: v.clone() for k, v in detector.backends[0].model.state_dict().items()}
    base = detector.settings
    asks = [(base, None), (base.but(hflip_tta=True), None), (base.but(hflip_tta=True, tta_scales=(1.0, 1.5)), None),
            (base.but(box_vote=not base.box_vote), None), (base.but(box_refine=2), None),
            (base, replace(detector.postprocess, max_boxes=1))]
    files = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[:3]
    alone = [[detector.detect(f, settings=s, postprocess=pp) for f in files] for s, pp in asks]
    distinct = {tuple(np.round(np.concatenate([d.boxes_orig_xyxy.ravel() for d in found]), 3)) for found in alone}
    assert len(distinct) == len(asks)  # every setting changes the answer, so a leak would show
    with ThreadPoolExecutor(len(asks) * 2) as pool:
        together = list(pool.map(lambda i: [detector.detect(f, settings=asks[i % len(asks)][0],
                                                            postprocess=asks[i % len(asks)][1]) for f in files],
                                 range(len(asks) * 2)))
    for i, found in enumerate(together):
        for got, want in zip(found, alone[i % len(asks)], strict=True):
            assert np.array_equal(got.boxes_orig_xyxy, want.boxes_orig_xyxy) and np.array_equal(got.scores, want.scores)
    assert detector.settings == base and all(torch.equal(v, before[k])
                                             for k, v in detector.backends[0].model.state_dict().items())
