import pytest

from pneumodet.config import ConfigError, RunConfig, dump_config, load_config


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
    assert (seed.model.detections_per_image, seed.predict.score_threshold, seed.model.box_nms) == (3, 0.78, 0.01)
