"""Layers only look down: each module imports modules on lower floors (or its own package's), never up.

The floors are the README's package map; Lightning stays inside training/.
"""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
FLOORS = {  # the foundations first: modules every layer may use
    0: ["pneumodet", "pneumodet.errors", "pneumodet.boxes", "pneumodet.network", "pneumodet.io.layout", "pneumodet.anchors",
        "pneumodet.memory", "pneumodet.roi_ops", "pneumodet.folding", "pneumodet.box_loss"],
    1: ["pneumodet.files", "pneumodet.metrics", "pneumodet.stats", "pneumodet.boxmetrics", "pneumodet.candidates"],
    2: ["pneumodet.config", "pneumodet.runs"],
    3: ["pneumodet.postprocess", "pneumodet.weights", "pneumodet.config_checks"],
    4: ["pneumodet.config_files", "pneumodet.io", "pneumodet.tuning", "pneumodet.settings", "pneumodet.gates", "pneumodet.forward"],
    5: ["pneumodet.data", "pneumodet.report.submission", "pneumodet.assess", "pneumodet.compare",
        "pneumodet.inference"],
    6: ["pneumodet.model", "pneumodet.onnx_runtime"],
    7: ["pneumodet.checkpoints", "pneumodet.onnx_export"],
    8: ["pneumodet.detector", "pneumodet.report"],
    9: ["pneumodet.training", "pneumodet.saved"],
    10: ["pneumodet.evaluate", "pneumodet.predict", "pneumodet.export", "pneumodet.pretrain", "pneumodet.service.review",
         "pneumodet.service.guard"],
    11: ["pneumodet.service", "pneumodet.demo", "pneumodet.pacs", "pneumodet.distil"],
    12: ["pneumodet.commands"],
    13: ["pneumodet.cli"],
}


def _floor(module: str) -> int:
    """Return the floor of ``module``: the most specific prefix listed."""
    best = (-1, None)
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), floor)
    assert best[1] is not None, f"{module} is on no floor: add it to FLOORS and the README's package map"
    return best[1]


def _imports() -> dict[str, set[str]]:
    found = {}
    for path in sorted((SRC / "pneumodet").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module] = {n for n in names if n.split(".")[0] in ("pneumodet", "lightning")}
    return found


def test_every_import_looks_down():
    wrong = []
    for module, names in _imports().items():
        package = module.rsplit(".", 1)[0]
        for name in names:
            if name.startswith("lightning"):
                continue
            same_package = name.rsplit(".", 1)[0] == package and package != "pneumodet"
            if _floor(name) >= _floor(module) and not same_package:
                wrong.append(f"{module} (floor {_floor(module)}) imports {name} (floor {_floor(name)})")
    assert not wrong, wrong


def test_lightning_only_in_training_and_metrics_only_on_boxes():
    imports = _imports()
    users = sorted(m for m, names in imports.items() if any(n.startswith("lightning") for n in names))
    assert users and all(m.startswith("pneumodet.training.") for m in users), users
    assert imports["pneumodet.metrics"] == {"pneumodet.boxes"}
    assert "pneumodet.io.kaggle" not in imports["pneumodet.model"]
    assert not {"pneumodet.predict", "pneumodet.cli"} & imports["pneumodet.service.app"]
