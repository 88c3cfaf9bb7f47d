import numpy as np
import pytest
import torch

from pneumodet import anchors
from pneumodet.anchors import anchor_shapes, best_iou, fit_anchors, kmeans_1d


def test_anchor_shapes_are_the_ones_torchvision_makes():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes, ratios = (16, 32, 64), (0.5, 1.0, 2.0)
    cells = AnchorGenerator((sizes,), (ratios,)).generate_anchors(sizes, ratios)  # (9, 4) xyxy around 0
    widths, heights = (cells[:, 2] - cells[:, 0]).numpy(), (cells[:, 3] - cells[:, 1]).numpy()
    ours = anchor_shapes(sizes, ratios)
    # torchvision orders ratio-major, rounds each corner; compare as sets of shapes
    theirs = np.array(sorted(zip(widths.round(), heights.round(), strict=True)))
    np.testing.assert_allclose(np.array(sorted(map(tuple, ours.round()))), theirs, atol=1)


def test_best_iou_of_a_box_with_itself_is_one_and_falls_with_the_shape():
    shapes = np.array([[20.0, 40.0]])
    assert best_iou([[20, 40]], shapes)[0] == pytest.approx(1.0)
    assert best_iou([[40, 20]], shapes)[0] == pytest.approx(400 / 1200)
    assert best_iou([[10, 20]], shapes)[0] == pytest.approx(0.25)


def test_kmeans_finds_two_groups():
    values = np.r_[np.full(20, 1.0), np.full(30, 5.0)] + np.linspace(-0.1, 0.1, 50)
    assert kmeans_1d(values, 2) == pytest.approx([1.0, 5.0], abs=0.1)


def test_tall_boxes_get_tall_anchors_that_match_them_better():
    rng = np.random.default_rng(0)
    widths = rng.lognormal(np.log(50), 0.3, 200)
    wh = np.stack([widths, widths * rng.lognormal(np.log(1.6), 0.2, 200)], axis=1)
    fit = fit_anchors(wh, (16, 32, 64, 128, 256), (0.5, 1.0, 2.0))
    assert fit.fitted and fit.reason == ""
    assert fit.mean_best_iou > fit.fixed_mean_best_iou + 0.02
    assert len(fit.ratios) == 3 and all(r > 1 for r in fit.ratios[1:])  # taller than wide
    assert 1.3 < fit.ratios[1] < 2.0
    assert [b / a for a, b in zip(fit.sizes, fit.sizes[1:], strict=False)] == pytest.approx([2.0] * 4, rel=0.1)
    assert fit.mean_best_iou == pytest.approx(best_iou(wh, anchor_shapes(fit.sizes, fit.ratios)).mean())


def test_the_fixed_anchors_stay_when_they_already_fit_or_the_boxes_are_few():
    squares = np.repeat(anchor_shapes((16, 32, 64, 128, 256), (1.0,)), 10, axis=0)
    kept = fit_anchors(squares, (16, 32, 64, 128, 256), (0.5, 1.0, 2.0))
    assert not kept.fitted and "not 0.01 above" in kept.reason
    assert kept.sizes == (16, 32, 64, 128, 256) and kept.ratios == (0.5, 1.0, 2.0)
    few = fit_anchors(np.array([[30.0, 60.0]] * (anchors.MIN_BOXES - 1)), (16, 32), (0.5, 1.0, 2.0))
    assert not few.fitted and f"fewer than {anchors.MIN_BOXES}" in few.reason
    empty = fit_anchors(np.zeros((0, 2)), (16, 32), (1.0,))
    assert not empty.fitted and empty.n_boxes == 0 and "anchors fixed" in empty.summary()


def test_a_run_trains_with_anchors_fitted_to_its_boxes_and_keeps_them(tiny_cache, tmp_path, monkeypatch):
    import json

    from pneumodet.checkpoints import load_trained
    from pneumodet.config_files import load_run_config
    from pneumodet.training.data import DetectionDataModule
    from pneumodet.training.train import ANCHORS_FILE, train
    from tests.conftest import tiny_config

    monkeypatch.setattr(anchors, "MIN_BOXES", 2)  # the tiny set's training split holds two boxes
    config = tiny_config("model.anchors=data")
    wh = DetectionDataModule(tiny_cache, config).train_boxes_wh()
    assert len(wh) >= 2 and (wh > 0).all()
    expected = fit_anchors(wh, config.model.anchor_sizes, config.model.anchor_ratios)
    assert expected.fitted  # synthetic boxes are tall: the fit must differ from (0.5, 1, 2)
    result = train(config, tiny_cache, run=tmp_path / "run", progress=False)
    saved = load_run_config(result.run / "config.yaml")
    assert saved.model.anchors == "data"
    assert saved.model.anchor_sizes == expected.sizes and saved.model.anchor_ratios == expected.ratios
    record = json.loads((result.run / ANCHORS_FILE).read_text())
    assert record["fitted"] and record["n_boxes"] == len(wh)
    model = load_trained(result.run)[0]  # what evaluate, predict and export build: the fitted anchors
    generator = model.rpn.anchor_generator
    assert [float(r) for r in generator.aspect_ratios[0]] == list(expected.ratios)
    assert tuple(s[0] for s in generator.sizes) == expected.sizes
    with torch.no_grad():
        assert set(model([torch.rand(1, 64, 64)])[0]) >= {"boxes", "scores"}
