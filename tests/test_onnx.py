import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumodet.checkpoints import load_trained
from pneumodet.detector import image_tensor, load_detector
from pneumodet.errors import UserError
from pneumodet.io.layout import TEST_IMAGES
from pneumodet.onnx_export import export_onnx
from pneumodet.onnx_runtime import OnnxBackend, engine_state
from pneumodet.report.submission import read_submission
from tests.conftest import assert_same_candidates

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                reason="the dev extra installs onnxruntime")


@pytest.fixture
def exported(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    model, config, info = load_trained(run)
    export_onnx(model, config.data.image_size, info["path"], run / "engine")
    return run


def test_the_engine_gives_the_same_candidates_as_pytorch(exported, synth_data):
    files = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))
    pytorch = load_detector(exported, engine="torch")
    engine = load_detector(exported, engine="onnx")
    assert pytorch.backend == "torch" and engine.backend == "onnx"
    assert load_detector(exported).backend == "onnx"  # auto: a current export is used
    assert isinstance(engine.backends[0], OnnxBackend) and engine.backends[0].heads_session is not None
    _assert_same_candidates(pytorch, engine, files)


def _assert_same_candidates(pytorch, engine, files):
    assert_same_candidates(pytorch, engine, files, box_atol=0.05, score_atol=1e-4)


def test_an_fpn_from_p3_exports_and_gives_the_same_candidates(tiny_cache, synth_data, tmp_path):
    """model.fpn_min_level 3: four FPN levels, so four objectness and four deltas outputs in the dense graph."""
    from pneumodet.onnx_runtime import read_meta
    from pneumodet.training.train import train
    from tests.conftest import tiny_config

    run = train(tiny_config("train.limit_val_batches=0", "model.min_score=0.0", "model.gate=True",
                            "model.fpn_min_level=3", "model.anchor_sizes=[16, 32, 64, 128]"),
                tiny_cache, run=tmp_path / "p3", progress=False).run
    model, config, info = load_trained(run)
    export_onnx(model, config.data.image_size, info["path"], run / "engine")
    assert read_meta(run / "engine")["feature_names"] == ["0", "1", "2", "pool"]
    pytorch, engine = (load_detector(run, engine=e) for e in ("torch", "onnx"))
    assert engine.backend == "onnx"
    _assert_same_candidates(pytorch, engine, sorted((synth_data / TEST_IMAGES).glob("*.dcm")))


def test_features_come_out_channels_last_and_an_older_format_is_stale(exported, synth_data):
    """The dense graph writes its features (N, H, W, C), as RoIAlign reads them; an export in an older format (as
    engine.json says) is stale: auto predicts with PyTorch and says so, onnx refuses in one line."""
    import json

    import onnxruntime as ort

    from pneumodet.onnx_runtime import ONNX_FILE, read_meta

    folder = exported / "engine"
    meta = read_meta(folder)
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    size = meta["image_size"]
    first = session.run(None, {"image": np.zeros((1, 3, size, size), np.float32)})[0]
    model, _, _ = load_trained(exported)
    assert first.shape[-1] == model.backbone.out_channels and first.shape[1] == first.shape[2]
    assert load_detector(exported).backend == "onnx"
    (folder / "engine.json").write_text(json.dumps({**meta, "format": meta["format"] - 1}))
    with pytest.warns(UserWarning, match="other weights .or by another pneumodet"):
        assert load_detector(exported).backend == "torch"
    with pytest.raises(UserError, match="run pneumodet export"):
        load_detector(exported, engine="onnx")


def test_the_engine_refines_boxes_as_pytorch_does(exported, synth_data):
    """predict.box_refine runs the box head again on its detections: in the engine, through the ONNX heads graph."""
    pytorch, engine = (load_detector(exported, engine=e, box_refine=1) for e in ("torch", "onnx"))
    assert engine.backend == "onnx" and [d.settings.box_refine for d in (pytorch, engine)] == [1, 1]
    _assert_same_candidates(pytorch, engine, sorted((synth_data / TEST_IMAGES).glob("*.dcm")))


def test_the_int8_box_head_is_quantized_and_close_to_fp32(exported):
    import onnx
    import onnxruntime as ort

    from pneumodet.onnx_export import quantize_heads_int8

    path = quantize_heads_int8(exported / "engine")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops, ops
    shape = [d.dim_value for d in onnx.load(str(exported / "engine" / "heads.onnx")).graph.input[0].type.tensor_type
             .shape.dim][1:]
    pooled = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pooled": pooled})
                 for p in (exported / "engine" / "heads.onnx", path))
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and 0 < np.abs(a - b).max() < 0.05 * max(1.0, np.abs(a).max())


def _fp32_convs(path) -> set[str]:
    """Return the Conv nodes of a QDQ graph whose weights are plain floats, not dequantized int8."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name for node in graph.node if node.op_type == "Conv" and node.input[1] not in dequantized}


@pytest.mark.parametrize("rpn_fp32", ["none", "outputs", "head"])
def test_int8_keeps_the_rpn_head_in_fp32_as_asked(exported, rpn_fp32):
    from pneumodet.onnx_export import quantize_int8, rpn_nodes

    folder = exported / "engine"
    calibration = [np.random.default_rng(i).random((1, 3, 64, 64), dtype=np.float32) for i in range(2)]
    kept = _fp32_convs(quantize_int8(folder, calibration, rpn_fp32=rpn_fp32))
    levels = len(load_trained(exported)[0].rpn.anchor_generator.sizes)
    outputs = {n for n in kept if n.startswith(("/rpn_head/cls_logits", "/rpn_head/bbox_pred"))}
    # objectness and deltas: one conv each per FPN level; the whole head adds its shared 3x3 conv per level
    assert len(outputs) == {"none": 0, "outputs": 2 * levels, "head": 2 * levels}[rpn_fp32]
    assert len(kept) == {"none": 0, "outputs": 2 * levels, "head": 3 * levels}[rpn_fp32], kept
    assert all(n.startswith("/rpn_head/") for n in kept)  # the backbone and FPN are int8 in every form
    assert set(rpn_nodes(folder / "dense.onnx", rpn_fp32)) >= kept
    with pytest.raises(ValueError, match="rpn_fp32"):
        quantize_int8(folder, calibration, rpn_fp32="all")


def test_a_stale_or_missing_export_falls_back_or_refuses(exported, trained_run):
    assert engine_state(trained_run, load_trained(trained_run)[2]["path"]) == "missing"
    with pytest.raises(UserError, match="no ONNX export; run pneumodet export"):
        load_detector(trained_run, engine="onnx")
    heads = exported / "engine" / "heads.onnx"
    heads.rename(heads.with_suffix(".moved"))  # a file engine.json names is gone: missing, not a crash
    assert engine_state(exported, load_trained(exported)[2]["path"]) == "missing"
    assert load_detector(exported).backend == "torch"
    heads.with_suffix(".moved").rename(heads)
    checkpoint = Path(load_trained(exported)[2]["path"])
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))  # retrained
    with pytest.warns(UserWarning, match="made from other weights"):
        assert load_detector(exported).backend == "torch"
    with pytest.raises(UserError, match="made from other weights"):
        load_detector(exported, engine="onnx")


@pytest.mark.filterwarnings("ignore:.*trained without flips")  # the tiny run trains without them
def test_the_engine_takes_the_sizes_of_scale_tta(exported, synth_data):
    pytorch = load_detector(exported, engine="torch", hflip_tta=True, tta_scales=(1.0, 1.5))
    engine = load_detector(exported, engine="onnx", hflip_tta=True, tta_scales=(1.0, 1.5))
    assert engine.backend == "onnx" and engine.settings.scales == (1.0, 1.5)
    image = pytorch.read(sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0])
    tensor = image_tensor(image.pixels, pytorch.image_size)
    (want,), (got,) = (d.candidates([tensor], [image.original_size]) for d in (pytorch, engine))
    assert len(want.scores) > 0 and len(got.scores) == len(want.scores)
    np.testing.assert_allclose(got.boxes_orig_xyxy, want.boxes_orig_xyxy, atol=0.05)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


def test_a_missing_extra_is_one_line(trained_run, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    from pneumodet.onnx_runtime import require_onnx

    with pytest.raises(UserError, match=r"pip install 'pneumodet\[onnx\]'"):
        require_onnx("pneumodet export")


@pytest.mark.slow
def test_cli_export_then_predict_with_each_engine(trained_run, synth_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "export", str(run)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "largest output difference" in proc.stdout and (run / "engine" / "dense.onnx").is_file()
    difference = float(proc.stdout.split("largest output difference ")[1].split(";")[0])
    assert difference < 1e-3
    outputs = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.csv"
        proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "predict", str(run), str(synth_data / TEST_IMAGES),
                               "--out", str(out), "--workers", "0", "--engine", engine, "--threshold", "0.0"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{engine} engine" in proc.stdout and "images/s" in proc.stdout
        outputs[engine] = read_submission(out)
    assert outputs["torch"].keys() == outputs["onnx"].keys()
    for pid, want in outputs["torch"].items():
        got = outputs["onnx"][pid]
        np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=0.15)  # written to 0.1 px
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-3)


def test_int8_is_used_only_where_its_boxes_agree_with_pytorch(exported):
    import json
    from dataclasses import replace

    from pneumodet.export import MIN_AGREEMENT, agreement, export_run

    result = export_run(exported, int8=True, calibration=8)
    meta = json.loads((exported / "engine" / "engine.json").read_text())
    assert meta["int8"]["images"] == result.int8["images"] > 0 and 0 <= meta["int8"]["agreement"] <= 1
    # fastest first: the RPN head's output convolutions fp32, then the whole RPN head fp32, each checked only if
    # the one before it disagrees
    first = meta["int8"]["agreement"] >= MIN_AGREEMENT
    assert ("rpn_head_agreement" in meta["int8"]) == (not first)
    active = first or meta["int8"]["rpn_head_agreement"] >= MIN_AGREEMENT
    assert meta["int8"]["rpn_fp32"] == ("outputs" if first else "head")
    assert meta["active"] == ("dense.int8.onnx" if active else "dense.onnx") and result.int8["active"] == active
    # where both parts in int8 disagree, the int8 box head alone was checked and used only if it agrees
    heads_active = active or meta["int8"]["heads_agreement"] >= MIN_AGREEMENT
    assert ("heads_agreement" in meta["int8"]) == (not active)
    assert meta["active_heads"] == ("heads.int8.onnx" if heads_active else "heads.onnx")
    assert result.int8["heads_active"] == heads_active
    want = "onnx int8" if active else "onnx int8 box head" if heads_active else "onnx"
    assert load_detector(exported).backend == result.int8["engine"] == want

    # the agreement measure itself: identical detectors agree everywhere, different post-processing does not
    from pneumodet.export import _images

    model, config, info = load_trained(exported)
    tensors = _images(exported, config, info, "val", 20)
    reference = load_detector(exported, engine="torch")
    assert agreement(reference, load_detector(exported, engine="torch"), tensors) == (1.0, len(tensors))
    other = load_detector(exported, engine="torch")
    other.postprocess = replace(other.postprocess, score_threshold=0.0, max_boxes=3, gate_threshold=0.0)
    reference.postprocess = replace(reference.postprocess, score_threshold=0.0, max_boxes=1, gate_threshold=0.0)
    assert agreement(reference, other, tensors)[0] < 1.0


def test_running_an_export_needs_onnxruntime_only(exported, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert load_detector(exported).backend == "onnx"  # auto: onnx (the exporter's package) is not needed to run it
