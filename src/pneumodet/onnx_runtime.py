"""The CPU inference backend: a trained model's dense layers and box head run in ONNX Runtime, the rest in torch.

``pneumodet export RUN`` (:mod:`pneumodet.onnx_export`) writes two graphs to ``RUN/engine/``: ``dense.onnx``
(backbone, FPN and RPN head: most of the FLOPs) and ``heads.onnx`` (box head and box predictor), with
``engine.json`` naming the checkpoint they came from, the files predict uses (``active``, ``active_heads``: fp32,
or int8 where it agreed with PyTorch) and the SHA-256 of every graph. :class:`OnnxBackend` runs them in place of
those parts; anchors, proposals, RoIAlign, the gate and post-processing stay torch's (:mod:`pneumodet.forward`), so
the boxes agree with PyTorch (a test and ``make bench`` check it). Picked over OpenVINO by measurement
(docs/benchmarks-history.md). Needs ONNX Runtime: ``pip install 'pneumodet[onnx]'``.

An export of another format than this pneumodet writes (``ENGINE_FORMAT``), or from other weights, is stale:
``auto`` predicts with PyTorch and says so, ``onnx`` refuses with one line naming the command that renews it.
"""

from __future__ import annotations

import importlib.util
import json
import platform
from collections import OrderedDict
from pathlib import Path

import torch

from pneumodet.errors import UserError
from pneumodet.files import checkpoint_identity, sha256_of, write_text_atomic
from pneumodet.forward import TorchBackend

ENGINE_DIR = "engine"
ONNX_FILE = "dense.onnx"
INT8_FILE = "dense.int8.onnx"
HEADS_FILE = "heads.onnx"
HEADS_INT8_FILE = "heads.int8.onnx"
META_FILE = "engine.json"
#: engine.json's format: both graphs, any input size, features and pooled RoIs channels-last, SHA-256 of each graph
ENGINE_FORMAT = 2


def require_onnx(what: str = "the ONNX engine", modules: tuple[str, ...] = ("onnxruntime", "onnx")) -> None:
    """Raise a one-line UserError naming the extra if one of ``modules`` is missing (running an export needs only
    onnxruntime; making one needs onnx too)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{what} needs the onnx extra: pip install 'pneumodet[onnx]'")


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


def engine_state(run_root: Path, checkpoint: Path) -> str:
    """Return ``ready``, ``missing`` (never exported, or a file engine.json names is gone) or ``stale`` (exported
    from another checkpoint, or in another format than this pneumodet's)."""
    folder = Path(run_root) / ENGINE_DIR
    if not (folder / META_FILE).is_file():
        return "missing"
    try:
        meta = read_meta(folder)
    except ValueError:
        return "stale"
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT or not isinstance(meta.get("sha256"), dict):
        return "stale"  # another format, or an export that vouches for no graph
    if not all((folder / meta[k]).is_file() for k in ("active", "active_heads")):
        return "missing"
    return "ready" if meta.get("source") == checkpoint_identity(checkpoint) else "stale"


def _session(path: Path, threads: int | None = None):
    """Return an ONNX Runtime CPU session for ``path`` with torch's thread count, sharing the cores with torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # ORT's threads spin after a run by default; here torch's threads run next on the same cores, and spinning
    # made torch's part of each image slower
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def backend_label(file: str, heads_file: str | None) -> str:
    """Return how predict names an engine: ``onnx``, ``onnx int8`` (both parts int8) or which part is int8."""
    if file == INT8_FILE:
        return "onnx int8" if heads_file in (None, HEADS_INT8_FILE) else "onnx int8 dense"
    return "onnx int8 box head" if heads_file == HEADS_INT8_FILE else "onnx"


class OnnxBackend(TorchBackend):
    """:class:`pneumodet.forward.TorchBackend` with the dense layers and the box head run by ONNX Runtime sessions
    of ``run_root``'s export (the files engine.json makes active, or ``file`` and ``heads_file``). The sessions
    hold no state between calls (ONNX Runtime's ``run`` may be called from several threads)."""

    def __init__(self, model, run_root: Path, threads: int | None = None, file: str | None = None,
                 heads_file: str | None = None):
        require_onnx(modules=("onnxruntime",))
        super().__init__(model, device="cpu")
        folder = Path(run_root) / ENGINE_DIR
        meta = read_meta(folder)
        file, heads_file = file or meta["active"], heads_file or meta["active_heads"]
        self.dense_session = _session(check_graph(folder, file, meta), threads)
        self.heads_session = _session(check_graph(folder, heads_file, meta), threads)
        self.feature_names = list(meta["feature_names"])
        self.classes = model.roi_heads.box_predictor.cls_score.out_features
        self.name = backend_label(file, heads_file)

    def dense(self, tensors: torch.Tensor):
        array = tensors.detach().float().contiguous().cpu().numpy()
        outputs = [torch.from_numpy(o) for o in self.dense_session.run(None, {"image": array})]
        levels = len(self.feature_names)
        # (N, C, H, W) views of the graph's (N, H, W, C) arrays: channels-last, as RoIAlign's gather reads them
        features = OrderedDict((name, f.permute(0, 3, 1, 2)) for name, f in zip(self.feature_names, outputs[:levels],
                                                                                strict=True))
        return features, outputs[levels:2 * levels], outputs[2 * levels:]

    def box_head(self, pooled: torch.Tensor):
        if pooled.shape[0] == 0:  # no proposal: nothing to run
            return pooled.new_zeros(0, self.classes), pooled.new_zeros(0, 4 * self.classes)
        # (N, R, R, C): a view of what RoIAlign's gather wrote, as the graph takes it
        array = pooled.permute(0, 2, 3, 1).detach().float().contiguous().cpu().numpy()
        logits, deltas = self.heads_session.run(None, {"pooled": array})
        return torch.from_numpy(logits), torch.from_numpy(deltas)


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
