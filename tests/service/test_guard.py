"""The service's guard: Host header, access token, upload caps, and no 500 for any upload."""

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pneumodet.cli import main
from pneumodet.io.layout import TEST_IMAGES
from pneumodet.service.app import create_app
from pneumodet.service.guard import allowed_hosts, host_name, resolve_token

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def app(trained_run):
    return create_app(trained_run, max_upload_mb=1)


def _dicom_bytes(synth_data) -> bytes:
    return sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0].read_bytes()


def test_host_header_must_name_the_bound_address(trained_run):
    app = create_app(trained_run, hosts=allowed_hosts("127.0.0.1"))
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/health").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/health").status_code == 200
    rebinding = TestClient(app, base_url="http://attacker.example:8000")
    for path in ("/api/health", "/", "/api/review/0/image.png"):
        assert rebinding.get(path).status_code == 421
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("10.1.2.3", ["ward.example"]) == {"10.1.2.3", "ward.example"}
    assert [host_name(h) for h in ("a:80", "[::1]:8000", "::1", "LOCALHOST")] == ["a", "::1", "::1", "localhost"]


def test_every_request_needs_the_token(trained_run, synth_data):
    client = TestClient(create_app(trained_run, token=TOKEN))
    for path in ("/", "/review", "/api/summary", "/api/review", "/api/review/0/image.png", "/plots/loss_curves.png"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    upload = {"file": ("x.dcm", _dicom_bytes(synth_data))}
    assert client.post("/api/predict", files=upload).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/summary", headers=good).status_code == 200
    assert client.post("/api/predict", files=upload, headers=good).status_code == 200
    # a browser opens the printed address once; the cookie then carries the token
    browser = TestClient(create_app(trained_run, token=TOKEN))
    assert browser.get(f"/?token={TOKEN}").status_code == 200
    assert browser.get("/api/review/0/image.png").status_code == 200


def test_serve_refuses_to_share_without_a_token(trained_run, capsys, monkeypatch):
    monkeypatch.delenv("PNEUMODET_TOKEN", raising=False)
    assert main(["serve", str(trained_run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err
    assert main(["serve", str(trained_run), "--host", "0.0.0.0", "--token", "short"]) == 2
    assert resolve_token("127.0.0.1", None) is None
    monkeypatch.setenv("PNEUMODET_TOKEN", TOKEN)
    assert resolve_token("0.0.0.0", None) == TOKEN


def _asgi_post(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """POST /api/predict straight through ASGI; return (status, how many body chunks the app asked for)."""
    asked, status = [0], [None]

    async def receive():
        asked[0] += 1
        if asked[0] <= len(chunks):
            return {"type": "http.request", "body": chunks[asked[0] - 1], "more_body": asked[0] < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    return status[0], asked[0]


def test_oversized_uploads_are_refused_before_or_while_reading(app):
    form = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    status, asked = _asgi_post(app, form + [(b"content-length", b"200000000")], [b"x" * 1000] * 5)
    assert status == 413 and asked == 0  # refused by Content-Length: not one byte read
    # no Content-Length (chunked): reading stops at the cap, not at the end of a 200 MB body
    head = b'--xyz\r\ncontent-disposition: form-data; name="file"; filename="a.dcm"\r\n\r\n'
    status, asked = _asgi_post(app, form, [head] + [b"\0" * 65536] * 3200)
    assert status == 413 and asked < 40
    raw = [(b"content-type", b"application/dicom")]
    status, asked = _asgi_post(app, raw, [b"\0" * 65536] * 3200)
    assert status == 413 and asked < 40


def test_uploads_never_reach_the_disk(app, synth_data, monkeypatch):
    import tempfile

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_disk)
    client = TestClient(app)
    data = _dicom_bytes(synth_data)
    assert client.post("/api/predict", files={"file": ("a.dcm", data)}).status_code == 200
    raw = client.post("/api/predict?filename=b.dcm", content=data, headers={"content-type": "application/dicom"})
    assert raw.status_code == 200 and raw.json()["patient_id"] == "b"


def test_malformed_requests_are_4xx(app):
    client = TestClient(app)
    assert client.post("/api/predict", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x"}).status_code in (400, 422)
    assert client.post("/api/predict", content=b"abc", headers={"content-type": "multipart/form-data"}).status_code == 400
    assert client.post("/api/predict", files={"other": ("a.dcm", b"abc")}).status_code == 422
    assert client.post("/api/predict", content=b"", headers={"content-type": "text/plain"}).status_code == 422


def test_no_upload_mutant_gets_a_500(app, synth_data):
    client = TestClient(app)
    blob = _dicom_bytes(synth_data)
    rng = np.random.default_rng(7)
    codes = []
    for n in range(60):
        data = bytearray(blob)
        if n % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            low, high = (132, 1200) if n % 3 == 1 else (1200, len(data))
            for _ in range(3):
                data[int(rng.integers(low, high))] = int(rng.integers(0, 256))
        codes.append(client.post("/api/predict", files={"file": (f"m{n}.dcm", bytes(data))}).status_code)
    assert all(code < 500 for code in codes), codes
    assert {200} < set(codes) and any(400 <= c < 500 for c in codes)
