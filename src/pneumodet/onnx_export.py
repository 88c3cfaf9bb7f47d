"""``export_onnx``: a trained model's dense layers and box head as ONNX graphs, and their int8 forms.

Two graphs go to ``RUN/engine/`` (:mod:`pneumodet.onnx_runtime` runs them): ``dense.onnx`` (backbone, FPN and RPN
head: most of the FLOPs, and plain convolutions that export cleanly) and ``heads.onnx`` (the box head and box
predictor: fully connected layers on each RoI's pooled features). int8: ``dense.int8.onnx`` is quantized statically
(scales calibrated on the run's images; the RPN head's output convolutions, or the whole RPN head, stay fp32:
:func:`quantize_int8`), ``heads.int8.onnx`` dynamically (int8 weights, each batch's activations quantized as it
runs: nothing to calibrate). Needs the ``onnx`` extra: ``pip install 'pneumodet[onnx]'``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from pneumodet.files import atomic_path, checkpoint_identity
from pneumodet.onnx_runtime import (
    ENGINE_DIR,
    ENGINE_FORMAT,
    HEADS_FILE,
    HEADS_INT8_FILE,
    INT8_FILE,
    ONNX_FILE,
    _session,
    require_onnx,
    write_meta,
)

OPSET = 17


class DenseExport(nn.Module):
    """Backbone + FPN + RPN head as one graph: normalised images in, (features..., objectness..., deltas...) out.

    With ``channels_last`` the features come out (N, H, W, C): RoIAlign reads them as rows of channels
    (``roi_ops``), which an (N, C, H, W) map has to be transposed into, image by image, after each batch (in a
    profile of ``predict`` at batch 8, 4 ms per image); ONNX Runtime writes them that way for free."""

    def __init__(self, backbone: nn.Module, rpn_head: nn.Module, channels_last: bool = False):
        super().__init__()
        self.backbone, self.rpn_head, self.channels_last = backbone, rpn_head, channels_last

    def forward(self, images: torch.Tensor):
        features = list(self.backbone(images).values())
        objectness, deltas = self.rpn_head(features)
        if self.channels_last:
            features = [f.permute(0, 2, 3, 1) for f in features]
        return (*features, *objectness, *deltas)


class HeadsExport(nn.Module):
    """Box head + box predictor as one graph: pooled RoI features (N, C, R, R) in, (class logits, deltas) out.

    With ``channels_last`` the graph takes them (N, R, R, C), as RoIAlign's gather writes them (``roi_ops``),
    so nothing is transposed between the two: the first fully connected layer of a two-layer MLP head gets its
    weight columns reordered to match (the same products, summed in another order); any other head
    transposes them in the graph."""

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module,
                 channels_last: tuple[int, int, int] | None = None):
        """``channels_last``: the pooled (C, R, R) shape, to take the pooled features (N, R, R, C)."""
        super().__init__()
        self.box_head, self.box_predictor, self.channels_last = box_head, box_predictor, channels_last is not None
        self.fc6_weight = None
        if channels_last and isinstance(box_head, TwoMLPHead):
            out = box_head.fc6.out_features
            self.fc6_weight = box_head.fc6.weight.detach().view(out, *channels_last).permute(0, 2, 3, 1).reshape(out, -1)

    def forward(self, pooled: torch.Tensor):
        if self.fc6_weight is not None:  # (N, R, R, C) flattened in that order, against reordered weights
            x = torch.relu(nn.functional.linear(pooled.flatten(1), self.fc6_weight, self.box_head.fc6.bias))
            return self.box_predictor(torch.relu(self.box_head.fc7(x)))
        if self.channels_last:
            pooled = pooled.permute(0, 3, 1, 2)
        return self.box_predictor(self.box_head(pooled))


def _pooled_shape(model) -> tuple[int, int, int]:
    """Return (channels, height, width) of what the box RoI pool hands the box head."""
    size = model.roi_heads.box_roi_pool.output_size
    height, width = (size, size) if isinstance(size, int) else size
    return model.backbone.out_channels, height, width


def export_onnx(model, image_size: int, checkpoint: Path, out_dir: str | Path) -> Path:
    """Export ``model``'s dense part (any batch, any input size: ``image_size`` px is the example, and
    ``predict.tta_scales`` runs others) to ``out_dir``; return the file."""
    require_onnx("pneumodet export")
    out_dir = Path(out_dir)
    dense = DenseExport(model.backbone, model.rpn.head, channels_last=True).eval()
    dense = dense.to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        names = list(model.backbone(example).keys())
        levels = len(names)
        outputs = ([f"feature_{n}" for n in names] + [f"objectness_{i}" for i in range(levels)]
                   + [f"deltas_{i}" for i in range(levels)])
        with atomic_path(out_dir / ONNX_FILE) as tmp, warnings.catch_warnings():
            # the TorchScript exporter: deprecated from torch 2.9 but what exports this plain CNN with no extra
            # package (the torch.export one needs onnxscript); torch is pinned, so it stays until the pin moves
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(dense, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["image"],
                              output_names=outputs,
                              dynamic_axes={k: {0: "batch", **_spatial_axes(k)} for k in ["image", *outputs]})
        pooled = _pooled_shape(model)
        heads = HeadsExport(model.roi_heads.box_head, model.roi_heads.box_predictor, channels_last=pooled).eval()
        with atomic_path(out_dir / HEADS_FILE) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(heads, (torch.zeros(2, pooled[1], pooled[2], pooled[0]),), str(tmp), dynamo=False,
                              opset_version=OPSET, input_names=["pooled"], output_names=["class_logits", "deltas"],
                              dynamic_axes={k: {0: "rois"} for k in ["pooled", "class_logits", "deltas"]})
    write_meta(out_dir, {"image_size": image_size, "feature_names": names, "opset": OPSET,
                         "torch": torch.__version__, "source": checkpoint_identity(checkpoint), "active": ONNX_FILE,
                         "active_heads": HEADS_FILE, "format": ENGINE_FORMAT})
    for stale in (INT8_FILE, HEADS_INT8_FILE):  # made from the weights before, if at all; no longer active
        (out_dir / stale).unlink(missing_ok=True)
    return out_dir / ONNX_FILE


def _spatial_axes(name: str) -> dict[int, str]:
    """The height and width axes of an exported tensor: (N, H, W, C) for the features, (N, C, H, W) otherwise."""
    return {1 if name.startswith("feature_") else 2: f"{name}_height",
            2 if name.startswith("feature_") else 3: f"{name}_width"}


def _quantize(out_dir: Path, source: str, target: str, quantize) -> Path:
    """Run ONNX Runtime's pre-processing on ``out_dir/source`` into a private file, then ``quantize(prepared,
    tmp)`` into ``out_dir/target`` atomically; the pre-processed file never outlives the call."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_dir / f".{source}.pre-{os.getpid()}"
    try:
        quant_pre_process(str(out_dir / source), str(prepared))
        with atomic_path(out_dir / target) as tmp:
            quantize(str(prepared), str(tmp))
    finally:
        prepared.unlink(missing_ok=True)
    return out_dir / target


RPN_FP32 = ("outputs", "head")  # what quantize_int8 can leave in fp32, cheapest first ("none": all int8)


def rpn_nodes(path: str | Path, part: str) -> list[str]:
    """Return the names of the RPN head's nodes in the dense graph at ``path``: its two output convolutions
    (``outputs``: objectness and box deltas) or all of it (``head``: the shared 3x3 conv too); none for ``none``.
    The exporter names each node by its module path, and DenseExport holds the RPN head as ``rpn_head``."""
    if part == "none":
        return []
    import onnx

    names = [node.name for node in onnx.load(str(path)).graph.node if node.name.startswith("/rpn_head/")]
    if part == "outputs":
        return [name for name in names if name.startswith(("/rpn_head/cls_logits", "/rpn_head/bbox_pred"))]
    return names


def quantize_int8(out_dir: str | Path, calibration: list, rpn_fp32: str = "outputs") -> Path:
    """Write ``INT8_FILE`` beside the fp32 export: weights int8 per channel, activations uint8, scales
    calibrated on ``calibration`` (the backbone's inputs for real images: (1, 3, S, S) float32 arrays).

    ``rpn_fp32`` keeps part of the RPN head in fp32 (see :func:`rpn_nodes`). Its objectness scores are ranked to
    pick the proposals, so a small quantization error there changes which boxes the model sees at all. Keeping
    the two output convolutions fp32 costs little; the whole head fp32 costs its 3x3 convolution on the stride-4
    level, the largest single one of R50-FPN's dense part (docs/benchmarks-history.md has the figures)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if rpn_fp32 not in (*RPN_FP32, "none"):
        raise ValueError(f"rpn_fp32 must be none, outputs or head, not {rpn_fp32!r}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"image": item}

    return _quantize(Path(out_dir), ONNX_FILE, INT8_FILE, lambda prepared, tmp: quantize_static(
        prepared, tmp, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=rpn_nodes(prepared, rpn_fp32)))


def quantize_heads_int8(out_dir: str | Path) -> Path:
    """Write ``HEADS_INT8_FILE`` beside the fp32 heads: int8 weights, activations quantized per batch as it runs
    (dynamic: the box head's inputs depend on the proposals, so there is nothing fixed to calibrate)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # only the fully connected layers: the matrix products are the cost (a conv box head stays fp32)
    return _quantize(Path(out_dir), HEADS_FILE, HEADS_INT8_FILE, lambda prepared, tmp: quantize_dynamic(
        prepared, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]))


def check_export(model, run_root: Path, image_size: int, repeats: int = 5, file: str = ONNX_FILE) -> dict:
    """Run the exported dense graph and the PyTorch model's dense part on the same random image, and the heads
    graph and PyTorch's box head on the same random RoI features; return the largest absolute difference of
    their outputs and each one's median milliseconds per image for the dense part."""
    import time

    import numpy as np

    session = _session(Path(run_root) / ENGINE_DIR / file)
    dense = DenseExport(model.backbone, model.rpn.head, channels_last=True).eval()
    image = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return out, 1000 * float(np.median(times))

    with torch.no_grad():
        want, torch_ms = timed(lambda: [o.numpy() for o in dense(image)])
    got, onnx_ms = timed(lambda: session.run(None, {"image": image.numpy()}))
    pairs = list(zip(want, got, strict=True))
    if (Path(run_root) / ENGINE_DIR / HEADS_FILE).is_file():
        pooled = torch.rand(8, *_pooled_shape(model), generator=torch.Generator().manual_seed(1))
        heads = _session(Path(run_root) / ENGINE_DIR / HEADS_FILE)
        with torch.no_grad():  # PyTorch's box head, as the model runs it, against the graph's
            want = [o.numpy() for o in HeadsExport(model.roi_heads.box_head, model.roi_heads.box_predictor).eval()(pooled)]
        given = pooled.permute(0, 2, 3, 1).contiguous()
        pairs += zip(want, heads.run(None, {"pooled": given.numpy()}), strict=True)
    diff = max(float(np.abs(a - b).max()) for a, b in pairs)
    return {"max_abs_diff": diff, "torch_ms": torch_ms, "onnx_ms": onnx_ms}


