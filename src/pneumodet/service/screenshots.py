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
def running_server(run: str | Path, port: int | None = None, app=None):
    """Serve ``run`` (or an ``app`` already made) on 127.0.0.1 in a background thread; yield its base URL; stop it
    afterwards."""
    import uvicorn

    from pneumodet.service.app import create_app

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app or create_app(run), host="127.0.0.1", port=port, access_log=False,
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
def chromium(downloads: str | Path | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="pneumodet-chromium-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(Path(downloads).resolve()),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    if downloads is not None:  # headless Chromium saves downloads only when told where
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow",
                                                             "downloadPath": str(Path(downloads).resolve())})
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
        external = driver.find_elements(By.ID, "external-map")
        seen["overview_external"] = external[0].text if external else None
        seen["overview_headings"] = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#metrics h3")]
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
        seen["upload_call"] = driver.find_element(By.CSS_SELECTOR, ".call").text
        driver.save_screenshot(str(out_dir / "try.png"))
    return seen


def review_round_trip(run: str | Path, out_dir: str | Path) -> dict:
    """Judge images on the review page as a reviewer would, restart the server, and export the labels.

    On the first server: open the first image, zoom and change window/level, draw a box with the mouse, then
    with the keyboard go to the next image and mark it correct, and to the one after and mark it wrong. On a
    second server (a restart), check the verdicts are shown and click "Export labels". Returns what the pages
    showed; the export lands in ``out_dir/reviewed_labels.csv`` and a screenshot in ``out_dir/review_detail.png``.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = {}
    state = "return document.getElementById('verdict-state').textContent"
    with chromium(downloads=out_dir) as driver:
        wait = WebDriverWait(driver, 60)
        with running_server(run) as url:
            driver.get(url + "/review")
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".card img")))
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)  # opens the first image
            wait.until(lambda d: d.execute_script("return R.gray !== null && !document.getElementById('detail').hidden"))
            seen["patient_ids"] = [driver.execute_script("return R.detail.patient_id")]
            center = "const c = document.getElementById('canvas').getContext('2d'); " \
                     "return Array.from(c.getImageData(0, 0, c.canvas.width, c.canvas.height).data).reduce((a, b) => a + b, 0)"
            before = driver.execute_script(center)
            driver.execute_script("const s = document.getElementById('ww'); s.value = 40; s.dispatchEvent(new Event('input'))")
            seen["window_changed_pixels"] = driver.execute_script(center) != before
            body = driver.find_element(By.TAG_NAME, "body")
            body.send_keys("+")
            seen["zoom"] = driver.execute_script("return R.zoom")
            body.send_keys("0")
            canvas = driver.find_element(By.ID, "canvas")
            # a drag from 30 % to 60 % of the canvas's shorter side, from its centre (inside the image)
            side = min(canvas.size["width"], canvas.size["height"])
            ActionChains(driver).move_to_element_with_offset(canvas, -side // 10, -side // 10).click_and_hold() \
                .move_by_offset(side // 5, side // 4).release().perform()
            wait.until(lambda d: "corrected (1 box)" in d.execute_script(state))
            seen["drawn"] = driver.execute_script("return R.boxes")
            driver.save_screenshot(str(out_dir / "review_detail.png"))
            body.send_keys(Keys.ARROW_RIGHT)
            wait.until(lambda d: d.execute_script("return R.pos") == 1 and d.execute_script("return R.detail.index") == 1)
            seen["patient_ids"].append(driver.execute_script("return R.detail.patient_id"))
            body.send_keys("c")
            wait.until(lambda d: "saved: correct" in d.execute_script(state))
            body.send_keys(Keys.ARROW_RIGHT)
            wait.until(lambda d: d.execute_script("return R.pos") == 2 and d.execute_script("return R.detail.index") == 2)
            seen["patient_ids"].append(driver.execute_script("return R.detail.patient_id"))
            body.send_keys("w")
            wait.until(lambda d: "saved: wrong" in d.execute_script(state))
            body.send_keys(Keys.ESCAPE)
            seen["js_errors"] = [e["message"] for e in driver.get_log("browser") if e.get("source") == "javascript"]
        with running_server(run) as url:  # a restart: a new app reads the saved verdicts
            driver.get(url + "/review")
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".card img")))
            seen["badges"] = [b.text for b in driver.find_elements(By.CSS_SELECTOR, ".card .badge")][:4]
            seen["export_text"] = driver.find_element(By.ID, "export").text
            driver.find_element(By.ID, "export").click()
            export = out_dir / "reviewed_labels.csv"
            wait.until(lambda d: export.is_file() and export.stat().st_size > 0)
    return seen
