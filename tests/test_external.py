"""An external test: another labelled set scored with the run's frozen tuning, into a report folder of its own,
the run's tuning and predict's output unchanged."""

import hashlib
import json
import shutil

import pytest

from pneumodet.cli import main
from pneumodet.data.prepare import prepare
from pneumodet.data.synth import synthesize
from pneumodet.io.layout import TEST_IMAGES


@pytest.fixture(scope="module")
def other_cache(tmp_path_factory):
    """Another labelled synthetic set, drawn from another seed and variant: none of its images is the run's."""
    root = tmp_path_factory.mktemp("other")
    synthesize(root / "data", n_train=24, n_test=0, seed=11, workers=1, progress=False, variant="shifted")
    prepare(root / "data", root / "cache", size_px=64, progress=False, workers=1, folds=2)
    return root / "cache"


def _digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "external" not in p.parts}


def test_an_external_set_is_scored_frozen_and_touches_nothing_of_the_run(run_with_boxes, other_cache, synth_data,
                                                                          tmp_path, capsys):
    run = run_with_boxes
    images = str(synth_data / TEST_IMAGES)
    assert main(["predict", str(run), images, "--out", str(tmp_path / "before.csv"), "--workers", "0"]) == 0
    before = _digests(run)
    assert main(["evaluate", str(run), "--data", str(other_cache), "--split", "all", "--name", "shifted"]) == 0
    out = capsys.readouterr().out
    assert "external set shifted RSNA mAP" in out and "tuned on val of the run, frozen" in out
    assert _digests(run) == before  # metrics.json, predictions, plots: as they were
    assert main(["predict", str(run), images, "--out", str(tmp_path / "after.csv"), "--workers", "0"]) == 0
    assert (tmp_path / "before.csv").read_bytes() == (tmp_path / "after.csv").read_bytes()
    report = json.loads((run / "external" / "shifted" / "metrics.json").read_text())
    frozen = json.loads((run / "metrics.json").read_text())
    assert report["postprocess"] == frozen["postprocess"] == report["postprocess_frozen"]
    assert report["hflip_tta"] == frozen["hflip_tta"] and report["n_images"] == 24
    assert report["rsna_map_ci"][0] <= report["rsna_map"] <= report["rsna_map_ci"][1]
    assert report["bootstrap"]["by"] == "image" and report["bootstrap"]["resamples"] >= 1000
    for name in ("roc.png", "froc.png", "precision_recall.png", "calibration.png"):
        assert (run / "external" / "shifted" / "plots" / name).is_file()
    assert not (run / "external" / "shifted" / "plots" / "threshold.png").exists()  # nothing was tuned here
    assert (run / "external" / "shifted" / "predictions" / "all.json").is_file()
    # re-scored from its saved predictions: the same figure
    assert main(["evaluate", str(run), "--data", str(other_cache), "--split", "all", "--name", "shifted",
                 "--reuse"]) == 0
    again = json.loads((run / "external" / "shifted" / "metrics.json").read_text())
    assert again["rsna_map"] == report["rsna_map"] and again["rsna_map_ci"] == report["rsna_map_ci"]


def test_retune_is_explicit_and_labelled(run_with_boxes, other_cache, capsys):
    before = (run_with_boxes / "metrics.json").read_bytes()
    assert main(["evaluate", str(run_with_boxes), "--data", str(other_cache), "--split", "all", "--retune"]) == 0
    report = json.loads((run_with_boxes / "external" / other_cache.name / "metrics.json").read_text())
    assert "optimistic" in report["tuned_on"] and (run_with_boxes / "metrics.json").read_bytes() == before


def test_what_an_external_test_refuses(trained_run, tiny_cache, other_cache, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    code = main(["evaluate", str(copy), "--data", str(tiny_cache), "--split", "all"])
    err = capsys.readouterr().err
    assert code == 2 and "are training images of" in err and err.count("\n") == 1
    code = main(["evaluate", str(copy), "--data", str(other_cache), "--split", "all", "--tta"])
    assert code == 2 and "drop --tta" in capsys.readouterr().err
    code = main(["evaluate", str(copy), "--split", "all"])
    assert code == 2 and "give it with --data CACHE" in capsys.readouterr().err
    (copy / "metrics.json").unlink()
    code = main(["evaluate", str(copy), "--data", str(other_cache), "--split", "all"])
    assert code == 2 and "not tuned yet" in capsys.readouterr().err
    assert not (copy / "external").exists()


def test_intervals_resample_whole_groups_where_prepare_was_given_them(run_with_boxes, tmp_path):
    from pneumodet.evaluate import evaluate

    data = tmp_path / "data"
    synthesize(data, n_train=20, n_test=0, seed=12, workers=1, progress=False)
    ids = sorted(p.stem for p in (data / "stage_2_train_images").glob("*.dcm"))
    (tmp_path / "groups.csv").write_text("patientId,group\n" + "".join(f"{pid},person{i // 4}\n"
                                                                      for i, pid in enumerate(ids)))
    prepare(data, tmp_path / "cache", size_px=64, progress=False, workers=1, folds=2, groups_csv=tmp_path / "groups.csv")
    report = evaluate(run_with_boxes, tmp_path / "cache", split="all", progress=False)
    assert report["bootstrap"]["by"] == "group" and report["bootstrap"]["units"] == 5


def _report(folder, scores, truth_boxes, image_scores):
    import pandas as pd

    (folder / "report").mkdir(parents=True)
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(len(scores))], "rsna_score": scores,
                  "truth_boxes": truth_boxes, "image_score": image_scores}).to_csv(folder / "report" / "per_image.csv",
                                                                                    index=False)
    return folder


def test_compare_gives_a_paired_difference_on_the_shared_images(run_with_boxes, other_cache, tmp_path, capsys):
    import numpy as np

    from pneumodet.compare import compare

    assert main(["evaluate", str(run_with_boxes), "--data", str(other_cache), "--split", "all", "--name", "x"]) == 0
    report = run_with_boxes / "external" / "x"
    same = compare(report, report)
    assert same["images"] == 24 and same["rsna_map"]["difference"] == 0 and same["rsna_map"]["difference_ci"] == [0, 0]
    rng = np.random.default_rng(1)
    truth = (rng.uniform(size=200) < 0.4).astype(int)
    better = np.where(truth > 0, rng.uniform(0.3, 0.9, 200), np.where(rng.uniform(size=200) < 0.5, 0.0, np.nan))
    worse = np.where(truth > 0, better - 0.1, better)  # 0.1 lower on every positive, the same elsewhere
    a = _report(tmp_path / "a", better, truth, truth * 0.6 + rng.uniform(0, 0.5, 200))
    b = _report(tmp_path / "b", worse, truth, rng.uniform(0, 1, 200))
    result = compare(a, b)
    assert result["rsna_map"]["difference"] == pytest.approx(np.nanmean(better) - np.nanmean(worse))
    assert result["rsna_map"]["difference_ci"][0] > 0 and result["roc_auc"]["difference_ci"][0] > 0
    assert main(["compare", str(a), str(b)]) == 0
    assert "RSNA mAP: A" in capsys.readouterr().out
    assert main(["compare", str(a), str(tmp_path)]) == 2 and "no report/per_image.csv" in capsys.readouterr().err
