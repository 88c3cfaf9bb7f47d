from pathlib import Path

import pytest

from pneumodet.config import ConfigError, RunConfig
from pneumodet.config_files import dump_config, load_config


def test_defaults_and_overrides():
    config = load_config(None, ["train.epochs=3", "model.backbone=resnet18_fpn", "train.lr=1e-3",
                                "train.stages=[{'until_epoch': 3}]", "augment.enabled=False"])
    assert config.train.epochs == 3 and config.model.backbone == "resnet18_fpn"
    assert config.train.lr == 0.001 and config.train.stages[0].lr_scale == 1.0
    assert config.augment.enabled is False
    with pytest.raises(AttributeError):
        config.train.epochs = 4  # frozen


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "did you mean train.lr?"),
    ("trian.epochs=3", "did you mean train.epochs?"),
    ("lr=0.1", "did you mean train.lr?"),
    ("train.epochs=abc", "train.epochs: expected int"),
    ("train.epochs=2.5", "train.epochs: expected int"),
    ("augment.scale=[1.0]", "augment.scale: expected 2 values"),
    ("model.backbone=vgg", "model.backbone must be one of"),
    ("train.epochs", "expected key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_yaml_round_trip(tmp_path):
    config = load_config(None, ["train.epochs=7", "data.image_size=128", "train.stages=[{'until_epoch': 7}]"])
    dump_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown configuration key 'train.epoch'; did you mean train.epochs"):
        load_config(tmp_path / "c.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"demo.yaml", "seed.yaml", "rsna.yaml"} <= set(names)
    for path in root.glob("*.yaml"):
        assert isinstance(load_config(path), RunConfig)
    seed = load_config(root / "seed.yaml")
    assert (seed.data.image_size, seed.train.batch_size, seed.model.rois_per_image) == (256, 8, 32)
    assert [(s.until_epoch, round(seed.train.lr * s.lr_scale, 6), s.layers) for s in seed.train.stages] == [
        (2, 0.012, "heads"), (6, 0.006, "all"), (16, 0.0012, "all")]
    assert (seed.predict.max_boxes, seed.predict.score_threshold, seed.predict.nms_iou) == (3, 0.78, 0.01)


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr must be in (0, 10], got -1"),
    ("data.num_workers=-3", "data.num_workers must be in [0, 256], got -3"),
    ("augment.hflip_p=2", "augment.hflip_p must be in [0, 1], got 2"),
    ("augment.scale=[1.2, 0.8]", "augment.scale is a (low, high) range, got [1.2, 0.8]; write [0.8, 1.2]"),
    ("augment.gamma=[0, 1.4]", "augment.gamma must be in (0, 10], got [0, 1.4]"),
    ("predict.score_threshold=5", "predict.score_threshold must be in [0, 1], got 5"),
    ("predict.max_boxes=0", "predict.max_boxes must be in [1, 100], got 0"),
    ("model.anchor_ratios=[-1]", "model.anchor_ratios must be in (0, 100], got [-1]"),
    ("model.anchor_ratios=[]", "model.anchor_ratios needs at least one value"),
    ("train.optimizer='adam'", "train.optimizer must be one of sgd, adamw, got 'adam'; did you mean adamw?"),
    ("model.backbone='resnet18'", "did you mean resnet18_fpn?"),
    ("model.tiny_depth=2", "model.tiny_depth applies to model.backbone tiny_fpn only, not resnet50_fpn"),
    ("model.tiny_depth=0", "model.tiny_depth must be in [1, 8], got 0"),
    ("model.fpn_min_level=3", "model.anchor_sizes needs 4 sizes, one per FPN level (P3-P6), got 5"),
    ("model.fpn_min_level=4", "model.fpn_min_level must be in [2, 3], got 4"),
    ("model.anchor_sizes=[32, 64, 128, 256]", "model.anchor_sizes needs 5 sizes, one per FPN level (P2-P6), got 4"),
    ("train.stages=[{'until_epoch': 20, 'lr_scale': 0}]", "train.stages[].lr_scale must be > 0"),
    ("train.stages=[{'until_epoch': 9}, {'until_epoch': 4}, {'until_epoch': 16}]", "until_epoch must be >= 1 and increasing"),
])
def test_out_of_range_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fpn_min_level_3_takes_four_anchor_sizes_and_not_mobilenet():
    config = load_config(None, ["model.fpn_min_level=3", "model.anchor_sizes=[32, 64, 128, 256]"])
    assert config.model.fpn_min_level == 3 and config.model.anchor_sizes == (32, 64, 128, 256)
    with pytest.raises(ConfigError, match="not mobilenet_v3_fpn"):
        load_config(None, ["model.backbone='mobilenet_v3_fpn'", "model.fpn_min_level=3",
                           "model.anchor_sizes=[32, 64, 128, 256]"])


def test_a_bad_value_creates_no_run_folder(tiny_cache, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "train", "--config", "configs/demo.yaml", "--data",
                           str(tiny_cache), "--runs", str(tmp_path / "runs"), "--set", "train.lr=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train.lr must be in" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_moved_keys_say_where_they_went():
    from pneumodet.config import from_dict

    with pytest.raises(ConfigError, match="model.box_nms is now predict.nms_iou"):
        load_config(None, ["model.box_nms=0.1"])
    with pytest.raises(ConfigError, match="model.detections_per_image is now predict.max_boxes"):
        from_dict({"model": {"detections_per_image": 3}})


def test_a_step_budget_trains_small_and_large_sets_equally_long():
    from pneumodet.training.schedule import schedule_for

    config = load_config(None, ["train.steps=1200", "train.batch_size=8", "train.epochs=12",
                                "train.stages=[{'until_epoch': 9}, {'until_epoch': 12, 'lr_scale': 0.1}]"])
    small, large = schedule_for(config, 240), schedule_for(config, 800)
    assert (small.train.epochs, [s.until_epoch for s in small.train.stages]) == (40, [30, 40])
    assert (large.train.epochs, [s.until_epoch for s in large.train.stages]) == (12, [9, 12])
    assert schedule_for(small, 240) == small  # a resumed run recomputes the same schedule
    assert schedule_for(load_config(None, ["train.epochs=3", "train.stages=[{'until_epoch': 3}]"]), 240).train.epochs == 3


def test_packaged_recipes_load_by_name_from_any_folder(tmp_path, monkeypatch):
    from pneumodet.config import ConfigError
    from pneumodet.config_files import load_config

    monkeypatch.chdir(tmp_path)  # no configs/ here: the names resolve inside the package
    assert load_config("demo").model.backbone == load_config(Path(__file__).parents[1] / "configs/demo.yaml").model.backbone
    assert load_config("rsna").data.image_size == 512 and load_config("seed").model.backbone == "resnet50_fpn"
    (tmp_path / "demo").write_text("train:\n  epochs: 7\n")  # a file by that name is a path, as given
    assert load_config("demo").train.epochs == 7
    with pytest.raises(ConfigError, match="not found .*packaged recipes: demo, rsna, seed"):
        load_config("nonexistent")
