"""On a CUDA GPU: the RoI ops' hand-over to torchvision, a bf16 training step, and the Detector's boxes against the
CPU's on the same weights. Skipped without a GPU; ``pytest -m cuda`` runs them where there is one."""

import pytest
import torch

from pneumodet.config import ModelConfig
from pneumodet.model import build_model
from tests.conftest import assert_same_candidates

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SIZE = 128


def test_roi_pooling_and_proposals_on_cuda_are_torchvisions_and_match_the_cpu():
    """On a GPU GatherRoIAlign and TopKeptRPN hand over to torchvision's kernels: the same pooled features and
    proposals as the CPU's gather and prefix NMS, to float rounding."""
    from pneumodet.forward import TorchBackend, _proposals, _transform

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18_fpn", weights="none", min_score=0.0), SIZE).eval()
    images = [torch.rand(1, SIZE, SIZE) for _ in range(2)]
    found = {}
    for device in ("cpu", "cuda"):
        backend = TorchBackend(model, device)
        with torch.inference_mode():
            batch = _transform(model.transform, [im.to(device) for im in images], SIZE)
            features, objectness, deltas = backend.dense(batch.tensors)
            proposals = _proposals(model.rpn, batch, features, objectness, deltas)
            pooled = model.roi_heads.box_roi_pool(features, proposals, batch.image_sizes)
        found[device] = ([p.cpu() for p in proposals], pooled.cpu())
    for cpu, gpu in zip(found["cpu"][0], found["cuda"][0], strict=True):  # NMS may break a near-tie otherwise
        assert len(cpu) > 0 and abs(len(cpu) - len(gpu)) <= 0.02 * len(cpu)
        torch.testing.assert_close(gpu[:20], cpu[:20], atol=1e-2, rtol=1e-3)
    if all(len(a) == len(b) for a, b in zip(found["cpu"][0], found["cuda"][0], strict=True)):
        torch.testing.assert_close(found["cuda"][1][:40], found["cpu"][1][:40], atol=1e-3, rtol=1e-3)


def test_a_bf16_training_step_on_cuda_is_finite_and_moves_the_weights():
    from pneumodet.config_files import load_config

    torch.manual_seed(0)
    config = load_config("rsna", ["model.weights=none", f"data.image_size={SIZE}"])
    model = build_model(config.model, SIZE).cuda().train()
    images = [torch.rand(1, SIZE, SIZE, device="cuda") for _ in range(2)]
    masks = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8, device="cuda")
    masks[0, 20:60, 30:70] = 1
    targets = [{"boxes": torch.tensor([[30.0, 20.0, 70.0, 60.0]], device="cuda"),
                "labels": torch.ones(1, dtype=torch.int64, device="cuda"), "masks": masks} for _ in images]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_gate" in losses
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, model.roi_heads.box_predictor.cls_score.weight)


def test_the_detectors_boxes_on_cuda_match_the_cpus_on_the_same_weights(trained_run, synth_data):
    from pneumodet.detector import Detector, load_detector
    from pneumodet.forward import TorchBackend
    from pneumodet.io.layout import TEST_IMAGES

    on_gpu = load_detector(trained_run, engine="torch", overrides={"score_threshold": 0.0})
    assert on_gpu.backends[0].device.type == "cuda"
    model_cpu = build_model(on_gpu.config.model, on_gpu.image_size)
    model_cpu.load_state_dict(on_gpu.backends[0].model.state_dict())
    on_cpu = Detector([TorchBackend(model_cpu, "cpu")], on_gpu.config, on_gpu.settings, on_gpu.postprocess)
    assert_same_candidates(on_cpu, on_gpu, sorted((synth_data / TEST_IMAGES).glob("*.dcm")), box_atol=0.5,
                           score_atol=1e-3)
