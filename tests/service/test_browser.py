import pytest

from pneumodet.io.layout import TEST_IMAGES
from pneumodet.service.screenshots import browser_available, take_screenshots

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not browser_available(), reason="needs Debian's chromium and chromium-driver "
                                 "(make test / .ci/run install them)")]


def test_review_page_and_upload_in_headless_chromium(trained_run, synth_data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    dicom = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0]
    seen = take_screenshots(run, dicom, run / "screenshots")
    assert seen["review_cards"] > 0 and seen["review_image_width"] > 0
    assert seen["first_card"].split(" · ")[0] in ("miss", "false alarm", "hit", "true negative")
    assert float(seen["upload_score"]) >= 0 and "box(es)" in seen["upload_text"]
    assert float(seen["overview_map"]) >= 0
    for page in ("overview", "review", "try"):
        assert (run / "screenshots" / f"{page}.png").stat().st_size > 10_000
