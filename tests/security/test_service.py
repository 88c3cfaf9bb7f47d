"""The review service against hostile input: bombs and floods that must not take it down, script that must stay
text, verdicts that must not be lost without a word, and error bodies that echo nothing large."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pneumodet.io.layout import TEST_IMAGES
from pneumodet.service.app import create_app
from pneumodet.service.screenshots import browser_available, free_port
from pneumodet.service.verdicts import VERDICTS_FILE
from tests.security.hostile import deflated_bomb
from tests.security.mounts import tmpfs

SCRIPT = '<img src=x onerror="window.pwned=1;alert(document.domain)">'
MAX_GROWTH_MB = 300


def _memory_mb(pid: int) -> tuple[float, float]:
    """Return (current RSS, peak RSS) of process ``pid`` in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    field = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
    return int(field["VmRSS"]) / 1024, int(field["VmHWM"]) / 1024


@pytest.fixture
def server(trained_run, tmp_path):
    """``pneumodet serve`` of the tiny run in its own process: (base URL, pid)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pneumodet.cli", "serve", str(trained_run), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"serve did not start: {process.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)
    try:
        yield url, process.pid
    finally:
        process.kill()
        process.wait()


def test_three_bombs_at_once_leave_the_server_small_and_answering(server, tmp_path, synth_data):
    url, pid = server
    bombs = [deflated_bomb(tmp_path / f"bomb{side}.dcm", side, side).read_bytes() for side in (8192, 16384, 16384)]
    before, _ = _memory_mb(pid)
    started = time.perf_counter()

    def post(blob: bytes):
        return httpx.post(url + "/api/predict", files={"file": ("bomb.dcm", blob)}, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(post, bombs))
    assert [a.status_code for a in answers] == [422] * 3
    assert all("more than the 25 M a radiograph may have" in a.json()["detail"] for a in answers)
    assert time.perf_counter() - started < 10
    _, peak = _memory_mb(pid)
    assert peak - before < MAX_GROWTH_MB, (before, peak)
    good = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0].read_bytes()
    assert httpx.post(url + "/api/predict", files={"file": ("ok.dcm", good)}, timeout=60).status_code == 200


def test_a_flood_of_empty_form_parts_is_refused_early(server):
    url, pid = server
    body = b"--b\r\n\r\n" * 3_700_000 + b"--b--\r\n"  # 3.7 M empty parts in 26 MB, under the 64 MB upload cap
    before, _ = _memory_mb(pid)
    started = time.perf_counter()
    try:
        status = httpx.post(url + "/api/predict", content=body, timeout=60,
                            headers={"content-type": "multipart/form-data; boundary=b"}).status_code
    except httpx.HTTPError:  # the server may close the connection before the client has sent it all
        status = 413
    assert status == 413 and time.perf_counter() - started < 10
    _, peak = _memory_mb(pid)
    assert peak - before < MAX_GROWTH_MB
    assert httpx.get(url + "/api/health", timeout=10).status_code == 200


def test_json_bodies_are_capped_and_errors_do_not_echo_them(server):
    url, pid = server
    before, _ = _memory_mb(pid)
    huge = json.dumps({"verdict": "x" * (20 * 2**20)})
    answer = httpx.put(url + "/api/review/0/verdict", content=huge, timeout=60,
                       headers={"content-type": "application/json"})
    assert answer.status_code == 413 and len(answer.text) < 400

    def chunked():  # no Content-Length: the cap applies while reading
        yield b'{"verdict": "'
        for _ in range(320):
            yield b"x" * 65536
        yield b'"}'

    try:
        status = httpx.put(url + "/api/review/0/verdict", content=chunked(), timeout=60,
                           headers={"content-type": "application/json"}).status_code
    except httpx.HTTPError:
        status = 413
    assert status == 413
    _, peak = _memory_mb(pid)
    assert peak - before < 100
    long = httpx.put(url + "/api/review/0/verdict", json={"verdict": "y" * 60_000}, timeout=60)
    assert long.status_code == 422 and len(long.text) < 400 and "yyyyyyyyyy" not in long.text


def test_a_full_service_answers_503_with_retry_after(trained_run, synth_data):
    import threading

    app = create_app(trained_run, max_decodes=1, max_queue=1)
    release, entered = threading.Event(), threading.Event()
    predict = app.state.service.predict

    def slow(data, name):
        entered.set()
        release.wait(30)
        return predict(data, name)

    app.state.service.predict = slow
    data = sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[0].read_bytes()

    def post(_):
        return TestClient(app).post("/api/predict", files={"file": ("x.dcm", data)})

    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(post, i) for i in range(2)]
        assert entered.wait(30)
        time.sleep(0.5)  # the second waits for the one slot
        refused = post(2)
        release.set()
        answers = [f.result() for f in first]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert "busy" in refused.json()["detail"]
    assert [a.status_code for a in answers] == [200, 200] and app.state.admission.peak_decoding == 1


def _write_verdicts(run: Path, entries: dict) -> None:
    (run / VERDICTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (run / VERDICTS_FILE).write_text(json.dumps({"verdicts": entries}))


@pytest.mark.parametrize("entry, says", [
    ({"verdict": SCRIPT, "boxes": [], "updated": "2026-12-01T10:00:00"}, "is not one of correct, wrong, corrected"),
    ("correct", "expected an object"),
    ({"verdict": "corrected", "boxes": [[1, 2, "x", 4]], "updated": "t"}, "boxes"),
    ({"verdict": "wrong", "boxes": [[1, 2, 3, 4]], "updated": "t"}, "do not fit the verdict wrong"),
])
def test_a_bad_verdicts_file_is_one_line_naming_the_entry(run_with_boxes, entry, says):
    _write_verdicts(run_with_boxes, {"good": {"verdict": "wrong", "boxes": [], "updated": "t"}, "patient-7": entry})
    done = subprocess.run([sys.executable, "-m", "pneumodet.cli", "serve", str(run_with_boxes), "--port",
                           str(free_port())], capture_output=True, text=True, timeout=120)  # a server that starts fails
    err = done.stderr
    assert done.returncode == 2 and err.count("\n") == 1 and "entry 'patient-7'" in err and says in err and "move the file away" in err


def test_a_verdict_that_cannot_be_written_is_refused_and_absent_after_restart(run_with_boxes, tmp_path):
    client = TestClient(create_app(run_with_boxes))
    assert client.put("/api/review/1/verdict", json={"verdict": "wrong"}).status_code == 200
    with tmpfs(run_with_boxes / "review", read_only=True):
        client = TestClient(create_app(run_with_boxes))
        refused = client.put("/api/review/0/verdict", json={"verdict": "wrong"})
        assert refused.status_code == 500 and "could not write" in refused.json()["detail"]
        assert "not saved" in refused.json()["detail"]
        listed = client.get("/api/review").json()
        assert listed["items"][0]["verdict"] is None and listed["reviewed"] == 1
        assert client.get("/api/review/0").json()["verdict"] is None
        assert client.get("/api/review/labels.csv").text.count("\n") == 2  # the header and the one saved verdict
        kept = client.delete("/api/review/1/verdict")
        assert kept.status_code == 500 and "still saved" in kept.json()["detail"]
        assert client.get("/api/review/1").json()["verdict"]["verdict"] == "wrong"
    restarted = TestClient(create_app(run_with_boxes)).get("/api/review").json()
    assert restarted["items"][0]["verdict"] is None and restarted["items"][1]["verdict"] == "wrong"


def test_an_unexpected_failure_is_json_without_a_traceback(run_with_boxes):
    app = create_app(run_with_boxes)

    def broken(*args, **kwargs):
        raise RuntimeError("/secret/path/of/the/server")

    app.state.verdicts.get = broken
    answer = TestClient(app, raise_server_exceptions=False).get("/api/review")
    assert answer.status_code == 500 and answer.json() == {
        "detail": "internal error (RuntimeError); the server's log has the details"}


@pytest.mark.slow
@pytest.mark.skipif(not browser_available(), reason="needs Debian's chromium and chromium-driver")
def test_hostile_strings_render_as_text_in_chromium(run_with_boxes):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pneumodet.service.screenshots import chromium, running_server

    metrics = json.loads((run_with_boxes / "metrics.json").read_text())
    metrics["by_view"] = {SCRIPT: next(iter(metrics["by_view"].values()))}
    metrics["n_images"] = SCRIPT
    (run_with_boxes / "metrics.json").write_text(json.dumps(metrics))
    shutil.copy(run_with_boxes / "plots" / "loss_curves.png", run_with_boxes / "plots" / f"{SCRIPT}.png")
    app = create_app(run_with_boxes)
    # what a tampered cache or verdicts file would put in the API's answers, past the checks on load
    review = app.state.review
    review["items"] = [dataclasses.replace(it, view=SCRIPT) for it in review["items"]]
    app.state.verdicts.verdicts[review["items"][0].patient_id] = {"verdict": SCRIPT, "boxes": [], "updated": "t"}
    with running_server(run_with_boxes, app=app) as url, chromium() as driver:
        wait = WebDriverWait(driver, 60)
        for page, ready in (("/", "#metrics table"), ("/review", ".card .badge span")):
            driver.get(url + page)
            wait.until(lambda d, css=ready: d.find_elements(By.CSS_SELECTOR, css))
            time.sleep(0.5)  # room for an injected onerror to fire
            with pytest.raises(NoAlertPresentException):
                _ = driver.switch_to.alert.text
            assert driver.execute_script("return window.pwned") is None
            assert SCRIPT in driver.find_element(By.TAG_NAME, "body").text  # shown as the characters it holds
            assert not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")
        errors = [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == []


@pytest.mark.slow
@pytest.mark.skipif(not browser_available(), reason="needs Debian's chromium and chromium-driver")
def test_the_page_says_a_verdict_was_not_saved(run_with_boxes):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from pneumodet.service.screenshots import chromium, running_server

    app = create_app(run_with_boxes)
    app.state.verdicts.path = run_with_boxes / "metrics.json" / "verdicts.json"  # a folder that cannot exist
    state = "return document.getElementById('verdict-state').textContent"
    with running_server(run_with_boxes, app=app) as url, chromium() as driver:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/review")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card img"))
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ENTER)
        wait.until(lambda d: d.execute_script("return R.detail !== null"))
        body.send_keys("c")
        wait.until(lambda d: "not saved" in d.execute_script(state))
        assert "could not write" in driver.execute_script(state)
        assert driver.find_element(By.CSS_SELECTOR, ".card .badge").text == ""  # the grid does not show it saved
        assert "(0 reviewed)" in driver.find_element(By.ID, "export").text
