"""The CPU inference engine: the detector's dense layers run in ONNX Runtime, the rest stays in torch.

``pneumodet export RUN`` writes two graphs of the trained model to ``RUN/engine/``: ``dense.onnx`` (backbone,
FPN and RPN head: most of the FLOPs, and plain convolutions that export cleanly) and ``heads.onnx`` (the box
head and box predictor: fully connected layers on each RoI's pooled features), with ``engine.json`` naming the
checkpoint they came from. :func:`attach` swaps those parts of a loaded model for ONNX Runtime sessions;
anchors, proposals, RoIAlign, the gate head and post-processing stay torchvision's, so the boxes agree with
PyTorch (a test and ``make bench`` check it). Picked over OpenVINO by measurement (BENCHMARKS.md). Needs the
``onnx`` extra: ``pip install 'pneumodet[onnx]'``.

int8: ``dense.int8.onnx`` is quantized statically (scales calibrated on the run's images; the RPN head's output
convolutions, or the whole RPN head, stay fp32: :func:`quantize_int8`), ``heads.int8.onnx`` dynamically (int8
weights, each batch's activations quantized as it runs: nothing to calibrate). engine.json's ``active`` and
``active_heads`` name the file of each part that predict uses; an export made before the heads
graph existed has neither ``heads`` key and runs its box head in torch. engine.json also holds the SHA-256 of
every graph beside it; a graph that does not match is refused with a one-line error, and an export without them
(made by an older pneumodet) counts as stale.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from pneumodet.errors import UserError
from pneumodet.files import atomic_path, checkpoint_identity, sha256_of, write_text_atomic

ENGINE_DIR = "engine"
ONNX_FILE = "dense.onnx"
INT8_FILE = "dense.int8.onnx"
HEADS_FILE = "heads.onnx"
HEADS_INT8_FILE = "heads.int8.onnx"
META_FILE = "engine.json"
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


def require_onnx(what: str = "the ONNX engine", modules: tuple[str, ...] = ("onnxruntime", "onnx")) -> None:
    """Raise a one-line UserError naming the extra if one of ``modules`` is missing (running an export needs only
    onnxruntime; making one needs onnx too)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{what} needs the onnx extra: pip install 'pneumodet[onnx]'")


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
                         "heads": HEADS_FILE, "active_heads": HEADS_FILE, "any_size": True,
                         "features_layout": "nhwc", "pooled_layout": "nhwc"})
    for stale in (INT8_FILE, HEADS_INT8_FILE):  # made from the weights before, if at all; no longer active
        (out_dir / stale).unlink(missing_ok=True)
    return out_dir / ONNX_FILE


def _spatial_axes(name: str) -> dict[int, str]:
    """The height and width axes of an exported tensor: (N, H, W, C) for the features, (N, C, H, W) otherwise."""
    return {1 if name.startswith("feature_") else 2: f"{name}_height",
            2 if name.startswith("feature_") else 3: f"{name}_width"}


def channels_last_features(meta: dict) -> bool:
    """Whether an export's features come out (N, H, W, C); exports made before that have (N, C, H, W)."""
    return meta.get("features_layout") == "nhwc"


def channels_last_pooled(meta: dict) -> bool:
    """Whether an export's box head takes the pooled features (N, R, R, C); before, (N, C, R, R)."""
    return meta.get("pooled_layout") == "nhwc"


def read_meta(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / META_FILE).read_text())


def write_meta(out_dir: str | Path, meta: dict) -> None:
    """Write engine.json with the SHA-256 of every graph now in ``out_dir``."""
    out_dir = Path(out_dir)
    meta = {**meta, "sha256": {p.name: sha256_of(p) for p in sorted(out_dir.glob("[!.]*.onnx"))}}
    write_text_atomic(out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")


def check_graph(folder: Path, name: str, meta: dict) -> Path:
    """Return ``folder/name`` if it matches the SHA-256 engine.json holds for it (a graph engine.json does not list
    yet, mid-export, is taken as it is); else a one-line UserError naming it."""
    path = folder / name
    expected = meta.get("sha256", {}).get(name)
    if expected is not None and sha256_of(path) != expected:
        raise UserError(f"{path}: does not match the SHA-256 in {META_FILE} (damaged or replaced); run pneumodet "
                        f"export {folder.parent} again")
    return path


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
    pick the proposals, so a small quantization error there changes which boxes the model sees at all: on make
    demo's model, 92.5 % of val images kept the same boxes with everything int8, 98.5 % with the two output
    convolutions fp32 (no measurable cost on R50-FPN) and 99.5 % with the whole head fp32 (its 3x3 conv on the
    stride-4 level is ~5 GFLOP at 256 px: R50-FPN's dense part about a third slower, and 206 against 137 ms per
    image at 512 px). BENCHMARKS.md has the figures."""
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


class _OnnxBackbone(nn.Module):
    """Stands in for the model's backbone: runs the exported graph, keeps the RPN head's outputs for it."""

    def __init__(self, session, feature_names: list[str], out_channels: int, channels_last: bool = False):
        super().__init__()
        self.session, self.feature_names, self.out_channels = session, feature_names, out_channels
        self.channels_last = channels_last
        self.rpn_outputs = None

    def forward(self, images: torch.Tensor):
        array = images.detach().float().contiguous().cpu().numpy()
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {"image": array})]
        levels = len(self.feature_names)
        self.rpn_outputs = (outputs[levels:2 * levels], outputs[2 * levels:])
        features = outputs[:levels]
        if self.channels_last:  # (N, C, H, W) views of the (N, H, W, C) arrays: channels-last, no copy
            features = [f.permute(0, 3, 1, 2) for f in features]
        return OrderedDict(zip(self.feature_names, features, strict=True))


class _StashedRpnHead(nn.Module):
    """Stands in for the RPN head: returns what the ONNX backbone computed for this batch."""

    def __init__(self, backbone: _OnnxBackbone):
        super().__init__()
        self.source = [backbone]  # a list: not a submodule, so it is not registered twice

    def forward(self, features):
        objectness, deltas = self.source[0].rpn_outputs
        return list(objectness), list(deltas)


class _OnnxBoxHead(nn.Module):
    """Stands in for the box head: runs the exported box head + predictor, keeps the predictor's outputs."""

    def __init__(self, session, classes: int, channels_last: bool = False):
        super().__init__()
        self.session, self.classes, self.channels_last = session, classes, channels_last
        self.outputs = None

    def forward(self, pooled: torch.Tensor):
        if pooled.shape[0] == 0:  # no proposal: nothing to run
            self.outputs = (pooled.new_zeros(0, self.classes), pooled.new_zeros(0, 4 * self.classes))
        else:
            if self.channels_last:  # (N, R, R, C): a view of what RoIAlign's gather wrote
                pooled = pooled.permute(0, 2, 3, 1)
            array = pooled.detach().float().contiguous().cpu().numpy()
            self.outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, {"pooled": array}))
        return pooled.new_zeros(pooled.shape[0], 0)  # what the predictor stand-in receives and ignores


class _StashedBoxPredictor(nn.Module):
    """Stands in for the box predictor: returns what the ONNX box head computed for these RoIs."""

    def __init__(self, head: _OnnxBoxHead):
        super().__init__()
        self.source = [head]  # a list: not a submodule, so it is not registered twice

    def forward(self, _features):
        return self.source[0].outputs


def engine_state(run_root: Path, checkpoint: Path) -> str:
    """Return ``ready``, ``missing`` (never exported, or a file engine.json names is gone) or ``stale``
    (exported from another checkpoint, or without the graphs' checksums)."""
    folder = Path(run_root) / ENGINE_DIR
    if not (folder / ONNX_FILE).is_file() or not (folder / META_FILE).is_file():
        return "missing"
    try:
        meta = read_meta(folder)
    except ValueError:
        return "stale"
    named = [meta.get(k) for k in ("active", "heads", "active_heads")]
    if not all((folder / name).is_file() for name in named if isinstance(name, str)):
        return "missing"
    return "ready" if meta.get("source") == checkpoint_identity(checkpoint) and "sha256" in meta else "stale"


def sizes_ok(run_root: Path, sizes: set[int]) -> bool:
    """Return whether ``run_root``'s export takes inputs of every size in ``sizes`` (an export made before the
    dense graph took any size takes only the one it was made for)."""
    meta = read_meta(Path(run_root) / ENGINE_DIR)
    return bool(meta.get("any_size")) or sizes <= {meta.get("image_size")}


def _session(path: Path, threads: int | None = None):
    """Return an ONNX Runtime CPU session for ``path`` with torch's thread count, sharing the cores with torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # ORT's threads spin after a run by default; here torch's threads run next on the same cores (measured:
    # spinning made torch's part of each image ~20 ms slower on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def engine_label(file: str, heads_file: str | None) -> str:
    """Return how predict names an engine: ``onnx``, ``onnx int8`` (both parts int8) or which part is int8."""
    if file == INT8_FILE:
        return "onnx int8" if heads_file in (None, HEADS_INT8_FILE) else "onnx int8 dense"
    return "onnx int8 box head" if heads_file == HEADS_INT8_FILE else "onnx"


def attach(model, run_root: Path, threads: int | None = None, file: str | None = None,
           heads_file: str | None = None):
    """Swap ``model``'s backbone, RPN head, box head and box predictor for the ONNX Runtime sessions of
    ``run_root``'s export (the files engine.json makes active: fp32, or int8 where it agreed with PyTorch;
    ``file`` and ``heads_file`` to choose); return it. An export without the heads graph leaves the box head in
    torch."""
    require_onnx(modules=("onnxruntime",))
    folder = Path(run_root) / ENGINE_DIR
    meta = read_meta(folder)
    file = file or meta.get("active", ONNX_FILE)
    session = _session(check_graph(folder, file, meta), threads)
    backbone = _OnnxBackbone(session, meta["feature_names"], model.backbone.out_channels,
                             channels_last_features(meta))
    model.backbone, model.rpn.head = backbone, _StashedRpnHead(backbone)
    if meta.get("heads"):
        heads_file = heads_file or meta.get("active_heads", HEADS_FILE)
        heads = model.roi_heads
        box_head = _OnnxBoxHead(_session(check_graph(folder, heads_file, meta), threads),
                                heads.box_predictor.cls_score.out_features,
                                channels_last_pooled(meta))
        heads.box_head, heads.box_predictor = box_head, _StashedBoxPredictor(box_head)
    else:
        heads_file = None
    model.engine = engine_label(file, heads_file)
    return model


def check_export(model, run_root: Path, image_size: int, repeats: int = 5, file: str = ONNX_FILE) -> dict:
    """Run the exported dense graph and the PyTorch model's dense part on the same random image, and the heads
    graph and PyTorch's box head on the same random RoI features; return the largest absolute difference of
    their outputs and each one's median milliseconds per image for the dense part."""
    import time

    import numpy as np

    session = _session(Path(run_root) / ENGINE_DIR / file)
    meta = read_meta(Path(run_root) / ENGINE_DIR)
    dense = DenseExport(model.backbone, model.rpn.head, channels_last_features(meta)).eval()
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
        given = pooled.permute(0, 2, 3, 1).contiguous() if channels_last_pooled(meta) else pooled
        pairs += zip(want, heads.run(None, {"pooled": given.numpy()}), strict=True)
    diff = max(float(np.abs(a - b).max()) for a, b in pairs)
    return {"max_abs_diff": diff, "torch_ms": torch_ms, "onnx_ms": onnx_ms}


def cpu_features() -> list[str]:
    """Return the CPU's instruction-set features that matter for inference (read, not assumed)."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in wanted if f in flags] or [platform.machine()]
