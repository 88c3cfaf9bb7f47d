import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumodet.detector import image_tensor, load_detector
from pneumodet.errors import UserError
from pneumodet.io.layout import TEST_IMAGES
from pneumodet.onnx_engine import engine_state, export_onnx
from pneumodet.report.submission import read_submission
from pneumodet.runs import load_trained

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
    assert pytorch.engine == "torch" and engine.engine == "onnx"
    assert load_detector(exported).engine == "onnx"  # auto: a current export is used
    heads = engine.predictors[0].model.roi_heads
    assert type(heads.box_head).__name__ == "_OnnxBoxHead"  # the box head runs in ONNX Runtime too
    _assert_same_candidates(pytorch, engine, files)


def _assert_same_candidates(pytorch, engine, files):
    n_boxes = 0
    for path in files:
        image = pytorch.read(path)
        tensor = image_tensor(image.pixels, pytorch.image_size)
        (want,), (got,) = (d.candidates([tensor], [image.original_size]) for d in (pytorch, engine))
        assert len(want.scores) == len(got.scores)
        np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=0.05)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        assert got.gate == pytest.approx(want.gate, abs=1e-4)  # the gate head reads the engine's features
        n_boxes += len(want.scores)
    assert n_boxes > 0  # the comparison is not vacuous (the tiny run keeps candidates down to score 0)


def test_an_fpn_from_p3_exports_and_gives_the_same_candidates(tiny_cache, synth_data, tmp_path):
    """model.fpn_min_level 3: four FPN levels, so four objectness and four deltas outputs in the dense graph."""
    from pneumodet.engine.train import train
    from pneumodet.onnx_engine import read_meta
    from tests.conftest import tiny_config

    run = train(tiny_config("train.limit_val_batches=0", "model.min_score=0.0", "model.gate=True",
                            "model.fpn_min_level=3", "model.anchor_sizes=[16, 32, 64, 128]"),
                tiny_cache, run=tmp_path / "p3", progress=False).run
    model, config, info = load_trained(run)
    export_onnx(model, config.data.image_size, info["path"], run / "engine")
    assert read_meta(run / "engine")["feature_names"] == ["0", "1", "2", "pool"]
    pytorch, engine = (load_detector(run, engine=e) for e in ("torch", "onnx"))
    assert engine.engine == "onnx"
    _assert_same_candidates(pytorch, engine, sorted((synth_data / TEST_IMAGES).glob("*.dcm")))


def test_features_come_out_channels_last_and_an_older_nchw_export_still_runs(exported, synth_data):
    """The dense graph writes its features (N, H, W, C) and the box head takes its pooled features (N, R, R, C),
    as RoIAlign reads and writes them; an export made before that (both (N, C, H, W), no ``features_layout`` or
    ``pooled_layout`` in engine.json) gives the same candidates."""
    import warnings

    import onnxruntime as ort
    import torch

    from pneumodet.onnx_engine import HEADS_FILE, ONNX_FILE, DenseExport, HeadsExport, read_meta, write_meta

    folder = exported / "engine"
    meta = read_meta(folder)
    assert meta["features_layout"] == meta["pooled_layout"] == "nhwc"
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    size = meta["image_size"]
    first = session.run(None, {"image": np.zeros((1, 3, size, size), np.float32)})[0]
    model, _, _ = load_trained(exported)
    assert first.shape[-1] == model.backbone.out_channels and first.shape[1] == first.shape[2]
    files = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))
    pytorch = load_detector(exported, engine="torch")
    _assert_same_candidates(pytorch, load_detector(exported, engine="onnx"), files)
    names = meta["feature_names"]
    outputs = ([f"feature_{n}" for n in names] + [f"objectness_{i}" for i in range(len(names))]
               + [f"deltas_{i}" for i in range(len(names))])
    with warnings.catch_warnings(), torch.no_grad():  # the graph as export wrote it before
        warnings.simplefilter("ignore")
        torch.onnx.export(DenseExport(model.backbone, model.rpn.head).eval(), (torch.zeros(1, 3, size, size),),
                          str(folder / ONNX_FILE), dynamo=False, opset_version=meta["opset"],
                          input_names=["image"], output_names=outputs,
                          dynamic_axes={k: {0: "b", 2: f"{k}h", 3: f"{k}w"} for k in ["image", *outputs]})
        heads = model.roi_heads
        torch.onnx.export(HeadsExport(heads.box_head, heads.box_predictor).eval(), (torch.zeros(2, first.shape[-1], 7, 7),),
                          str(folder / HEADS_FILE), dynamo=False, opset_version=meta["opset"], input_names=["pooled"],
                          dynamic_axes={"pooled": {0: "rois"}})
    write_meta(folder, {k: v for k, v in meta.items() if k not in ("features_layout", "pooled_layout")})
    _assert_same_candidates(pytorch, load_detector(exported, engine="onnx"), files)


def test_the_engine_refines_boxes_as_pytorch_does(exported, synth_data):
    """predict.box_refine runs the box head again on its detections: in the engine, through the ONNX heads graph."""
    pytorch, engine = (load_detector(exported, engine=e, box_refine=1) for e in ("torch", "onnx"))
    assert engine.engine == "onnx" and [d.predictors[0].box_refine for d in (pytorch, engine)] == [1, 1]
    _assert_same_candidates(pytorch, engine, sorted((synth_data / TEST_IMAGES).glob("*.dcm")))


def test_an_export_without_the_heads_graph_keeps_the_box_head_in_torch(exported, synth_data):
    import json

    meta_path = exported / "engine" / "engine.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("heads", "active_heads")}))
    (exported / "engine" / "heads.onnx").unlink()  # as an export made before the heads graph existed
    engine = load_detector(exported)
    assert engine.engine == "onnx"
    assert type(engine.predictors[0].model.roi_heads.box_head).__name__ == "TwoMLPHead"
    pytorch = load_detector(exported, engine="torch")
    image = pytorch.read(sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0])
    tensor = image_tensor(image.pixels, pytorch.image_size)
    (want,), (got,) = (d.candidates([tensor], [image.original_size]) for d in (pytorch, engine))
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)


def test_the_int8_box_head_is_quantized_and_close_to_fp32(exported):
    import onnx
    import onnxruntime as ort

    from pneumodet.onnx_engine import quantize_heads_int8

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
    from pneumodet.onnx_engine import quantize_int8, rpn_nodes

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
    assert load_detector(exported).engine == "torch"
    heads.with_suffix(".moved").rename(heads)
    checkpoint = Path(load_trained(exported)[2]["path"])
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))  # retrained
    with pytest.warns(UserWarning, match="made from other weights"):
        assert load_detector(exported).engine == "torch"
    with pytest.raises(UserError, match="made from other weights"):
        load_detector(exported, engine="onnx")


@pytest.mark.filterwarnings("ignore:.*trained without flips")  # the tiny run trains without them
def test_the_engine_takes_the_sizes_of_scale_tta_and_an_old_fixed_size_export_does_not(exported, synth_data):
    import json

    pytorch = load_detector(exported, engine="torch", hflip_tta=True, tta_scales=(1.0, 1.5))
    engine = load_detector(exported, engine="onnx", hflip_tta=True, tta_scales=(1.0, 1.5))
    assert engine.engine == "onnx" and engine.predictors[0].scales == (1.0, 1.5)
    image = pytorch.read(sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0])
    tensor = image_tensor(image.pixels, pytorch.image_size)
    (want,), (got,) = (d.candidates([tensor], [image.original_size]) for d in (pytorch, engine))
    assert len(want.scores) > 0 and len(got.scores) == len(want.scores)
    np.testing.assert_allclose(got.boxes_xyxy, want.boxes_xyxy, atol=0.05)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    meta_path = exported / "engine" / "engine.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "any_size"}))  # an export made before
    assert load_detector(exported, hflip_tta=True).engine == "onnx"  # one size: it still serves
    with pytest.warns(UserWarning, match="takes one input size"):
        assert load_detector(exported, hflip_tta=True, tta_scales=(1.0, 1.5)).engine == "torch"
    with pytest.raises(UserError, match="takes one input size.*pneumodet export"):
        load_detector(exported, engine="onnx", hflip_tta=True, tta_scales=(1.0, 1.5))


def test_a_missing_extra_is_one_line(trained_run, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    from pneumodet.onnx_engine import require_onnx

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
    assert load_detector(exported).engine == result.int8["engine"] == want

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
    assert load_detector(exported).engine == "onnx"  # auto: onnx (the exporter's package) is not needed to run it
