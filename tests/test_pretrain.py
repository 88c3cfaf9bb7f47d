import hashlib
import json
import subprocess
import sys

import pytest
import torch

from pneumodet import pretrain as pretraining
from pneumodet.config_files import load_config
from pneumodet.errors import UserError
from pneumodet.model import build_model
from pneumodet.weights import SYNTH_WEIGHTS


def test_the_packaged_weights_fit_demo_yaml_s_model_tensor_for_tensor():
    # a change to demo.yaml's model that the packaged file no longer fits must fail here, not load half the weights
    state = torch.load(SYNTH_WEIGHTS, map_location="cpu", weights_only=True)
    record = json.loads(SYNTH_WEIGHTS.with_name(SYNTH_WEIGHTS.name + ".json").read_text())
    assert record["sha256"] == hashlib.sha256(SYNTH_WEIGHTS.read_bytes()).hexdigest()
    config = load_config("demo", ["model.weights=synth"])
    model = build_model(config.model, config.data.image_size)
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_the_packaged_weights_come_from_the_default_pretraining_set_which_holds_no_held_out_variant():
    from pneumodet.data import synth

    record = json.loads(SYNTH_WEIGHTS.with_name(SYNTH_WEIGHTS.name + ".json").read_text())
    assert (record["variants"], record["images"], record["seed"]) == (pretraining.VARIANTS, pretraining.IMAGES,
                                                                      pretraining.SEED)
    pool = synth.variant_pool(pretraining.VARIANTS)
    assert pool and not set(pool) & set(synth.HELD_OUT)


def test_synth_weights_are_for_tiny_fpn_only():
    config = load_config("rsna", ["model.weights=synth"])
    with pytest.raises(UserError, match="synthetic-pretrained weights for tiny_fpn only"):
        build_model(config.model, config.data.image_size)


def test_pretrain_writes_weights_a_run_starts_from_and_refuses_what_it_should(tmp_path):
    from tests.conftest import tiny_config

    config = tiny_config("train.epochs=1", "train.stages=[{'until_epoch': 1}]", "model.weights=synth")
    with pytest.raises(UserError, match="faint is held out"):
        pretraining.pretrain(config, tmp_path / "w.pt", tmp_path / "work", images=12, variants="default,faint")
    result = pretraining.pretrain(config, tmp_path / "w.pt", tmp_path / "work", images=16, progress=False)
    state = torch.load(result.weights, map_location="cpu", weights_only=True)
    record = json.loads((tmp_path / "w.pt.json").read_text())
    assert record["images"] == 16 and record["variants"] == pretraining.VARIANTS
    assert record["sha256"] == hashlib.sha256(result.weights.read_bytes()).hexdigest()
    assert "--seed 7" in record["made_by"]
    started = build_model(tiny_config(f"model.weights={result.weights}").model, 64)
    fresh = build_model(tiny_config().model, 64)
    for key, value in started.state_dict().items():  # every tensor came from the file, none left random
        assert torch.equal(value, state[key]), key
    assert not all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items() if v.is_floating_point())
    with pytest.raises(UserError, match="never overwrites"):
        pretraining.pretrain(config, result.weights, tmp_path / "work", images=16, progress=False)
    # killed after training but before the file was written: the same call writes it, training nothing again
    stamp = (result.run / "weights" / "last.ckpt").stat().st_mtime_ns
    again = pretraining.pretrain(config, tmp_path / "again.pt", tmp_path / "work", images=16, progress=False)
    assert (result.run / "weights" / "last.ckpt").stat().st_mtime_ns == stamp
    written = torch.load(again.weights, map_location="cpu", weights_only=True)
    assert written.keys() == state.keys() and all(torch.equal(written[k], state[k]) for k in state)
    assert json.loads((tmp_path / "again.pt.json").read_text())["best_val_rsna_map"] == record["best_val_rsna_map"]


def test_pretrain_command_refuses_a_held_out_variant_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "pretrain", "--out", str(tmp_path / "w.pt"),
                           "--variant", "wide,portable"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "portable is held out" in proc.stderr
    assert not (tmp_path / "w.pt").exists()
