"""Drive the real pages in headless Chromium: open review, see boxes, upload a DICOM, see the result.

Used by the end-to-end test and to make the README's screenshots. Needs Debian's ``chromium`` and
``chromium-driver`` and the ``selenium`` package (``pip install -e .[dev]``).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900"]


def browser_available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(run: str | Path, port: int | None = None):
    """Serve ``run`` on 127.0.0.1 in a background thread; yield its base URL; stop it afterwards."""
    import uvicorn

    from pneumodet.service.app import create_app

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, access_log=False,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="pneumodet-chromium-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def take_screenshots(run: str | Path, dicom: str | Path, out_dir: str | Path) -> dict:
    """Open each page of ``run``, check what it shows, save overview/review/try PNGs in ``out_dir``.

    Returns what the pages showed: review cards and their loaded image width, the uploaded
    file's image score and box count.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = {}
    with running_server(run) as url, chromium() as driver:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(EC.presence_of_element_located((By.ID, "rsna-map")))
        seen["overview_map"] = driver.find_element(By.ID, "rsna-map").text
        wait.until(lambda d: d.execute_script(
            "return [...document.images].length > 0 && [...document.images].every(i => i.complete)"))
        driver.save_screenshot(str(out_dir / "overview.png"))
        driver.get(url + "/review")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".card img")))
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('.card img'); return i.complete && i.naturalWidth > 0"))
        seen["review_cards"] = len(driver.find_elements(By.CSS_SELECTOR, ".card"))
        seen["review_image_width"] = driver.execute_script("return document.querySelector('.card img').naturalWidth")
        seen["first_card"] = driver.find_element(By.CSS_SELECTOR, ".card .meta").text
        driver.save_screenshot(str(out_dir / "review.png"))
        driver.get(url + "/try")
        driver.find_element(By.ID, "files").send_keys(str(Path(dicom).resolve()))
        driver.find_element(By.ID, "go").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "img.prediction")))
        wait.until(lambda d: d.execute_script("return document.querySelector('img.prediction').naturalWidth > 0"))
        seen["upload_score"] = driver.find_element(By.CSS_SELECTOR, ".image-score").text
        seen["upload_text"] = driver.find_element(By.CSS_SELECTOR, ".result").text
        driver.save_screenshot(str(out_dir / "try.png"))
    return seen
