import pytest

from pneumodet.io.layout import TEST_IMAGES
from pneumodet.service.screenshots import browser_available, take_screenshots

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not browser_available(), reason="needs Debian's chromium and chromium-driver "
                                 "(make test / .ci/run install them)")]


def test_review_page_and_upload_in_headless_chromium(trained_run, synth_data, tmp_path):
    import shutil

    from pneumodet.data.prepare import prepare
    from pneumodet.data.synth import synthesize
    from pneumodet.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    synthesize(tmp_path / "other", n_train=12, n_test=0, seed=21, workers=1, progress=False)
    prepare(tmp_path / "other", tmp_path / "other-cache", size_px=64, progress=False, workers=1, folds=2)
    external = evaluate(run, tmp_path / "other-cache", split="all", name="other", progress=False)
    dicom = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0]
    seen = take_screenshots(run, dicom, run / "screenshots")
    assert seen["review_cards"] > 0 and seen["review_image_width"] > 0
    assert seen["first_card"].split(" · ")[0] in ("miss", "false alarm", "hit", "true negative")
    assert float(seen["upload_score"]) >= 0 and "box(es)" in seen["upload_text"]
    assert seen["upload_call"].startswith(("Positive: opacity found", "Negative: no opacity found"))
    assert float(seen["overview_map"]) >= 0
    # the overview leads with the external test, its interval beside it, and says what val was tuned on
    assert seen["overview_headings"][:2] == ["External test: other", "Validation (val)"]
    low, high = external["rsna_map_ci"]
    assert seen["overview_external"] == f"{external['rsna_map']:.3f} ({low:.3f}–{high:.3f})"
    for page in ("overview", "review", "try"):
        assert (run / "screenshots" / f"{page}.png").stat().st_size > 10_000


def test_a_reviewer_draws_a_box_restarts_exports_and_prepares_it(run_with_boxes, synth_data, tmp_path):
    import numpy as np

    from pneumodet.data.prepare import prepare
    from pneumodet.io.labels import read_labels
    from pneumodet.io.layout import TRAIN_IMAGES
    from pneumodet.service.screenshots import review_round_trip

    seen = review_round_trip(run_with_boxes, tmp_path / "browser")
    assert seen["window_changed_pixels"] and seen["zoom"] > 1 and seen["js_errors"] == []
    assert seen["badges"][:3] == ["corrected", "correct", "wrong"] and "3 reviewed" in seen["export_text"]
    labels = read_labels(tmp_path / "browser" / "reviewed_labels.csv")
    drawn, correct, wrong = (labels.annotations[pid] for pid in seen["patient_ids"])
    np.testing.assert_allclose(drawn.boxes_xywh, seen["drawn"], atol=0.01)
    assert drawn.boxes_xywh[0, 2] > 50 and drawn.boxes_xywh[0, 3] > 50  # a real drag, in the image's own pixels
    assert not wrong.positive and len(labels.annotations) == 3
    data = tmp_path / "data"
    data.mkdir()
    (data / TRAIN_IMAGES).symlink_to(synth_data / TRAIN_IMAGES)
    result = prepare(data, tmp_path / "cache", size_px=64, labels_csv=tmp_path / "browser" / "reviewed_labels.csv",
                     progress=False, workers=1, folds=2)
    assert result.summary["usable"] == 3 and result.summary["boxes"] == len(drawn.boxes_xywh) + len(correct.boxes_xywh)
