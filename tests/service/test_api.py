from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from pneumodet.io.layout import TEST_IMAGES
from pneumodet.service.app import create_app
from tests.conftest import gradient


@pytest.fixture(scope="module")
def client(trained_run):
    return TestClient(create_app(trained_run))


def _dicom(synth_data):
    return sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0]


def test_health_and_pages(client):
    assert client.get("/api/health").json()["status"] == "ok"
    for page, marker in (("/", 'data-page="overview"'), ("/review", 'data-page="review"'), ("/try", 'data-page="try"')):
        response = client.get(page)
        assert response.status_code == 200 and marker in response.text
        assert "script-src 'self';" in response.headers["content-security-policy"]
        assert "<script>" not in response.text and "onclick" not in response.text  # the policy allows no inline
    summary = client.get("/api/summary").json()
    assert summary["metrics"]["rsna_map"] is not None and "loss_curves.png" in summary["plots"]
    assert client.get("/plots/loss_curves.png").headers["content-type"] == "image/png"
    assert client.get("/plots/..%2Fconfig.yaml").status_code == 404


def test_predict_a_dicom(client, synth_data):
    path = _dicom(synth_data)
    response = client.post("/api/predict", files={"file": (path.name, path.read_bytes(), "application/dicom")})
    assert response.status_code == 200
    body = response.json()
    assert body["patient_id"] == path.stem and 0 <= body["image_score"] <= 1
    assert body["view"] in ("AP", "PA") and body["original_size"] == {"height": 1024, "width": 1024}
    for box in body["boxes"]:
        assert set(box) == {"x", "y", "width", "height", "score"}
        assert 0 <= box["x"] and box["x"] + box["width"] <= 1024.1  # original pixels, not cache pixels
    assert "image_png" not in body
    with_image = client.post("/api/predict?image=true", files={"file": (path.name, path.read_bytes())}).json()
    assert with_image["image_png"].startswith("data:image/png;base64,")


def test_bad_uploads_get_clear_4xx(client, synth_data, tmp_path, make_dicom):
    response = client.post("/api/predict", files={"file": ("notes.dcm", b"hello" * 100)})
    assert response.status_code == 415 and "not a DICOM" in response.json()["detail"]
    data = _dicom(synth_data).read_bytes()
    response = client.post("/api/predict", files={"file": ("cut.dcm", data[: len(data) // 2])})
    assert response.status_code == 422 and "cut.dcm" in response.json()["detail"]
    assert client.post("/api/predict", files={"file": ("empty.dcm", b"")}).status_code == 400
    assert client.post("/api/predict").status_code == 422  # no file field
    odd = make_dicom("wide", gradient(100, 300))
    body = client.post("/api/predict", files={"file": ("wide.dcm", odd.read_bytes())}).json()
    assert body["original_size"] == {"height": 100, "width": 300}


def test_upload_limit(trained_run, synth_data):
    small = TestClient(create_app(trained_run, max_upload_mb=0.01))
    response = small.post("/api/predict", files={"file": ("big.dcm", _dicom(synth_data).read_bytes())})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_concurrent_requests_queue_one_inference_at_a_time(trained_run, synth_data):
    app = create_app(trained_run)
    client = TestClient(app)
    data = _dicom(synth_data).read_bytes()

    def post(_):
        return client.post("/api/predict", files={"file": ("x.dcm", data)}).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(post, range(12)))
    assert codes == [200] * 12
    assert app.state.service.served == 12 and app.state.service.max_active == 1


def test_review_lists_worst_first_and_filters(run_with_every_outcome):
    client = TestClient(create_app(run_with_every_outcome))
    everything = client.get("/api/review").json()
    items = everything["items"]
    assert items and everything["note"] == ""
    scores = [it["score"] for it in items if it["score"] is not None]
    assert scores == sorted(scores) and scores[0] == 0.0 and scores[-1] > 0  # misses and false alarms first
    assert all(it["score"] is None for it in items[len(scores):])  # true negatives last
    assert [it["index"] for it in items] == list(range(len(items)))
    counts = {}
    for outcome in ("miss", "false alarm", "hit", "true negative"):
        subset = client.get("/api/review", params={"outcome": outcome}).json()["items"]
        assert subset and all(it["outcome"] == outcome for it in subset)  # every outcome is there to filter
        counts[outcome] = len(subset)
    assert sum(counts.values()) == len(items)
    view = everything["views"][0]
    assert all(it["view"] == view for it in client.get("/api/review", params={"view": view}).json()["items"])
    assert client.get("/api/review", params={"outcome": "maybe"}).status_code == 400
    png = client.get("/api/review/0/image.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get(f"/api/review/{len(items)}/image.png").status_code == 404


def test_nothing_is_written_and_no_patient_data_is_logged(trained_run, synth_data, caplog):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*") if p.is_file()}
    client = TestClient(create_app(trained_run))
    path = _dicom(synth_data)
    with caplog.at_level("DEBUG"):
        client.post("/api/predict", files={"file": (path.name, path.read_bytes())})
    after = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*") if p.is_file()}
    assert before == after
    assert path.stem not in caplog.text


def test_the_call_sizes_in_mm_and_the_patients_sides(run_with_boxes, make_dicom):
    from tests.conftest import gradient

    client = TestClient(create_app(run_with_boxes))  # keeps every candidate box: a positive call
    path = make_dicom("spaced", gradient(200, 100), tags={"PixelSpacing": [0.2, 0.1], "ViewPosition": "AP",
                                                           "PatientOrientation": ["R", "F"]})
    body = client.post("/api/predict", files={"file": ("spaced.dcm", path.read_bytes())}).json()
    assert body["call"] == ("positive" if body["boxes"] else "negative") and body["call_reason"]
    assert body["pixel_spacing_mm"] == [0.2, 0.1]
    for box in body["boxes"]:  # rows 0.2 mm apart, columns 0.1 mm
        assert box["width_mm"] == pytest.approx(box["width"] * 0.1, abs=0.06)
        assert box["height_mm"] == pytest.approx(box["height"] * 0.2, abs=0.06)
    # PatientOrientation says the columns run to the patient's right: the image is mirrored from the usual display
    assert body["sides"] == {"image_left": "L", "image_right": "R"}
    plain = make_dicom("plain", gradient(64, 64), tags={"ViewPosition": "PA"})
    body = client.post("/api/predict", files={"file": ("plain.dcm", plain.read_bytes())}).json()
    assert body["sides"] == {"image_left": "R", "image_right": "L"} and body["pixel_spacing_mm"] is None
    assert all("width_mm" not in box for box in body["boxes"])


def test_the_gate_says_negative_in_words(trained_run):
    from types import SimpleNamespace

    app = create_app(trained_run)
    service = app.state.service
    service.pp = service.pp.__class__(0.5, 0.3, 3, 1.0, 0.6)
    said = service.call(SimpleNamespace(scores=[], gate=0.2))
    assert said == {"call": "negative", "call_reason": "the gate's probability of an opacity, 0.20, is below its "
                                                      "threshold 0.6"}
    assert service.call(SimpleNamespace(scores=[0.9, 0.7], gate=0.8))["call_reason"].startswith("2 boxes kept")
