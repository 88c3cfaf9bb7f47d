"""The CPU inference engine: the detector's convolutions run in ONNX Runtime, the rest stays in torch.

``pneumodet export RUN`` writes the dense part of the trained model (backbone, FPN and RPN head: most of
the FLOPs, and plain convolutions that export cleanly) to ``RUN/engine/dense.onnx``, with ``engine.json``
naming the checkpoint it came from. :func:`attach` swaps that part of a loaded model for an ONNX Runtime
session; anchors, proposals, RoIAlign, the box head, the gate head and post-processing stay torchvision's,
so the boxes agree with PyTorch (a test and ``make bench`` check it). Picked over OpenVINO by measurement
(BENCHMARKS.md). Needs the ``onnx`` extra: ``pip install 'pneumodet[onnx]'``.
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

from pneumodet.errors import UserError
from pneumodet.files import atomic_path, write_text_atomic

ENGINE_DIR = "engine"
ONNX_FILE = "dense.onnx"
INT8_FILE = "dense.int8.onnx"
META_FILE = "engine.json"
OPSET = 17


class DenseExport(nn.Module):
    """Backbone + FPN + RPN head as one graph: normalised images in, (features..., objectness..., deltas...) out."""

    def __init__(self, backbone: nn.Module, rpn_head: nn.Module):
        super().__init__()
        self.backbone, self.rpn_head = backbone, rpn_head

    def forward(self, images: torch.Tensor):
        features = list(self.backbone(images).values())
        objectness, deltas = self.rpn_head(features)
        return (*features, *objectness, *deltas)


def source_of(checkpoint: Path) -> dict:
    """Return what identifies a checkpoint file cheaply (an export from another one is stale)."""
    stat = Path(checkpoint).stat()
    return {"checkpoint": Path(checkpoint).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def require_onnx(what: str = "the ONNX engine", modules: tuple[str, ...] = ("onnxruntime", "onnx")) -> None:
    """Raise a one-line UserError naming the extra if one of ``modules`` is missing (running an export needs only
    onnxruntime; making one needs onnx too)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{what} needs the onnx extra: pip install 'pneumodet[onnx]'")


def export_onnx(model, image_size: int, checkpoint: Path, out_dir: str | Path) -> Path:
    """Export ``model``'s dense part for ``image_size`` px inputs (any batch) to ``out_dir``; return the file."""
    require_onnx("pneumodet export")
    out_dir = Path(out_dir)
    dense = DenseExport(model.backbone, model.rpn.head).eval().to(memory_format=torch.contiguous_format)
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
                              output_names=outputs, dynamic_axes={k: {0: "batch"} for k in ["image", *outputs]})
    write_meta(out_dir, {"image_size": image_size, "feature_names": names, "opset": OPSET,
                         "torch": torch.__version__, "source": source_of(checkpoint), "active": ONNX_FILE})
    (out_dir / INT8_FILE).unlink(missing_ok=True)  # made from the weights before, if at all; no longer active
    return out_dir / ONNX_FILE


def read_meta(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / META_FILE).read_text())


def write_meta(out_dir: str | Path, meta: dict) -> None:
    write_text_atomic(Path(out_dir) / META_FILE, json.dumps(meta, indent=2) + "\n")


def quantize_int8(out_dir: str | Path, calibration: list) -> Path:
    """Write ``INT8_FILE`` beside the fp32 export: weights int8 per channel, activations uint8, scales
    calibrated on ``calibration`` (the backbone's inputs for real images: (1, 3, S, S) float32 arrays)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_dir = Path(out_dir)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"image": item}

    prepared = out_dir / f".{ONNX_FILE}.pre-{os.getpid()}"
    try:
        quant_pre_process(str(out_dir / ONNX_FILE), str(prepared))
        with atomic_path(out_dir / INT8_FILE) as tmp:
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)
    return out_dir / INT8_FILE


class _OnnxBackbone(nn.Module):
    """Stands in for the model's backbone: runs the exported graph, keeps the RPN head's outputs for it."""

    def __init__(self, session, feature_names: list[str], out_channels: int):
        super().__init__()
        self.session, self.feature_names, self.out_channels = session, feature_names, out_channels
        self.rpn_outputs = None

    def forward(self, images: torch.Tensor):
        array = images.detach().float().contiguous().cpu().numpy()
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {"image": array})]
        levels = len(self.feature_names)
        self.rpn_outputs = (outputs[levels:2 * levels], outputs[2 * levels:])
        return OrderedDict(zip(self.feature_names, outputs[:levels], strict=True))


class _StashedRpnHead(nn.Module):
    """Stands in for the RPN head: returns what the ONNX backbone computed for this batch."""

    def __init__(self, backbone: _OnnxBackbone):
        super().__init__()
        self.source = [backbone]  # a list: not a submodule, so it is not registered twice

    def forward(self, features):
        objectness, deltas = self.source[0].rpn_outputs
        return list(objectness), list(deltas)


def engine_state(run_root: Path, checkpoint: Path) -> str:
    """Return ``ready``, ``missing`` (never exported) or ``stale`` (exported from another checkpoint)."""
    folder = Path(run_root) / ENGINE_DIR
    if not (folder / ONNX_FILE).is_file() or not (folder / META_FILE).is_file():
        return "missing"
    try:
        meta = read_meta(folder)
    except ValueError:
        return "stale"
    return "ready" if meta.get("source") == source_of(checkpoint) else "stale"


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


def attach(model, run_root: Path, threads: int | None = None, file: str | None = None):
    """Swap ``model``'s backbone and RPN head for the ONNX Runtime session of ``run_root``'s export (the one
    engine.json makes active: fp32, or int8 when it agreed with PyTorch; ``file`` to choose); return it."""
    require_onnx(modules=("onnxruntime",))
    folder = Path(run_root) / ENGINE_DIR
    meta = read_meta(folder)
    file = file or meta.get("active", ONNX_FILE)
    session = _session(folder / file, threads)
    backbone = _OnnxBackbone(session, meta["feature_names"], model.backbone.out_channels)
    model.backbone, model.rpn.head = backbone, _StashedRpnHead(backbone)
    model.engine = "onnx int8" if file == INT8_FILE else "onnx"
    return model


def check_export(model, run_root: Path, image_size: int, repeats: int = 5, file: str = ONNX_FILE) -> dict:
    """Run the exported graph and the PyTorch model's dense part on the same random image; return the largest
    absolute difference of their outputs and each one's median milliseconds per image."""
    import time

    import numpy as np

    session = _session(Path(run_root) / ENGINE_DIR / file)
    dense = DenseExport(model.backbone, model.rpn.head).eval()
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
    diff = max(float(np.abs(a - b).max()) for a, b in zip(want, got, strict=True))
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
