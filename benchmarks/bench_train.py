"""Training step time: Mask R-CNN ResNet-50 FPN, batch 2, on this machine's CPU cores.

Each setting runs in its own process (peak memory is per process): 2 warm-up steps, then the
mean of N timed steps with one box per image, as the Keras reference was timed. The optimizer
steps with lr 0: a randomly initialised ResNet with frozen (identity) BatchNorm diverges after
one real step, its RPN then proposes nothing and the RoI heads cost nothing, which flatters
every setting alike. The baseline is stock torchvision's ``maskrcnn_resnet50_fpn`` (its defaults, untrained,
so its BatchNorm trains), timed in the same run at each size: every row states its ratio to it.
"""

from __future__ import annotations

import json
import subprocess
import sys

P3 = {"fpn_min_level": 3, "anchor_sizes": [16, 32, 64, 128]}  # no stride-4 level: one anchor size fewer
SETTINGS = [
    # (label, size, overrides); "stock" rows are torchvision's own model, the baseline of the rows of their size
    ("stock torchvision maskrcnn_resnet50_fpn, its defaults (512 RoIs, 2000 proposals, BatchNorm training)", 256,
     {"stock": True}),
    ("torchvision defaults (512 RoIs, 2000 proposals)", 256,
     {"rois_per_image": 512, "rpn_post_nms_train": 2000, "roi_positive_fraction": 0.25}),
    ("seed settings (32 RoIs, 2000 proposals)", 256, {"rpn_post_nms_train": 2000}),
    ("seed + 500 proposals", 256, {"rpn_post_nms_train": 500}),
    ("seed + 500 proposals + bf16 autocast", 256, {"rpn_post_nms_train": 500, "bf16": True}),
    ("seed + 500 proposals + bf16, conv1+layer1 frozen", 256,
     {"rpn_post_nms_train": 500, "bf16": True, "trainable_layers": 3}),
    ("seed settings, FPN from P3 (model.fpn_min_level 3)", 256,
     {"rpn_post_nms_train": 2000, **P3}),
    ("seed + 500 proposals + bf16, conv1+layer1 frozen, FPN from P3", 256,
     {"rpn_post_nms_train": 500, "bf16": True, "trainable_layers": 3, **P3}),
    ("seed settings, backbone + FPN through torch.compile", 256, {"rpn_post_nms_train": 2000, "compile": True}),
    ("seed + 500 proposals + bf16, conv1+layer1 frozen, backbone + FPN through torch.compile", 256,
     {"rpn_post_nms_train": 500, "bf16": True, "trainable_layers": 3, "compile": True}),
    ("stock torchvision maskrcnn_resnet50_fpn, its defaults (512 RoIs, 2000 proposals, BatchNorm training)", 512,
     {"stock": True}),
    ("seed settings (32 RoIs, 2000 proposals)", 512, {"rpn_post_nms_train": 2000}),
    ("seed + 500 proposals + bf16 autocast", 512, {"rpn_post_nms_train": 500, "bf16": True}),
    ("seed + 500 proposals + bf16, conv1+layer1 frozen", 512,
     {"rpn_post_nms_train": 500, "bf16": True, "trainable_layers": 3}),
    ("seed settings, FPN from P3 (model.fpn_min_level 3)", 512, {"rpn_post_nms_train": 2000, **P3}),
]

CHILD = r"""
import json, resource, sys, time, torch
from pneumodet.config import ModelConfig
from pneumodet.memory import keep_freed_memory
from pneumodet.model import build_model
keep_freed_memory()  # as pneumodet train does
size, overrides, steps = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
bf16 = overrides.pop("bf16", False)
compiled = overrides.pop("compile", False)
stock = overrides.pop("stock", False)
torch.manual_seed(0)
if stock:  # torchvision's model as a user gets it untrained: its defaults, nothing of pneumodet's
    import torchvision
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                                               min_size=size, max_size=size).train()
else:
    model = build_model(ModelConfig(backbone="resnet50_fpn", weights="none", **overrides), size).train()
if compiled:  # the fixed-size part (batched images -> FPN levels); the warm-up steps compile it
    model.backbone = torch.compile(model.backbone)
images = [torch.rand(3 if stock else 1, size, size) for _ in range(2)]
b = size / 4
targets = [{"boxes": torch.tensor([[b, b, 2 * b, 3 * b]]), "labels": torch.tensor([1]),
            "masks": torch.zeros(1, size, size, dtype=torch.uint8)} for _ in range(2)]
for t in targets:
    t["masks"][0, int(b):int(3 * b), int(b):int(2 * b)] = 1
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
times = []
for i in range(2 + steps):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = sum(model(images, targets).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= 2:
        times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step_s": sum(times) / len(times), "peak_mib": peak}))
"""


def run(steps: int = 8) -> list[tuple[str, str]]:
    """One row per setting; each ``N× stock`` is stock torchvision's step time at that size, in this run, over
    the setting's (absolute times moved 1.4-1.8× between two runs on one machine in one session)."""
    rows, stock = [], {}
    for label, size, overrides in SETTINGS:
        out = subprocess.run([sys.executable, "-c", CHILD, str(size), json.dumps(overrides), str(steps)],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        if overrides.get("stock"):
            stock[size] = result["step_s"]
        ratio = f" = {stock[size] / result['step_s']:.2f}× stock" if size in stock else ""
        rows.append((f"train step, R50-FPN, batch 2, {size} px: {label}",
                     f"{result['step_s']:.2f} s/step{ratio}, peak {result['peak_mib']:.0f} MiB"))
    return rows
