"""``create_app(run)``: FastAPI app with the overview, review and try-it pages and a JSON API.

The model is loaded once; inference runs one request at a time behind a lock (requests queue,
never crash each other), and at most ``max_decodes`` uploads are decoded at once, ``max_queue`` more waiting;
beyond that, 503 with Retry-After. An upload is read as a stream, capped, and parsed in memory: nothing it
holds touches the disk. The one file the app writes is the reviewer's verdicts (``RUN/review/verdicts.json``,
``service.verdicts``). Logs carry no patient data: URLs name images by index, and uvicorn's access log is
off. ``service.guard`` checks the Host header and the access token, caps every request body, and sets the
headers that keep the pages' scripts our own. Every error is JSON ``{"detail": ...}`` that echoes no more than a
few hundred characters of what was sent.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pneumodet.detector import load_detector
from pneumodet.errors import UserError
from pneumodet.evaluate import EXTERNAL, external_reports
from pneumodet.io.dicom import DicomError, read_dicom_bytes
from pneumodet.metrics import OUTCOMES
from pneumodet.postprocess import PostProcess
from pneumodet.runs import run_dataset
from pneumodet.service.guard import (
    Admission,
    Busy,
    allowed_hosts,
    install_guard,
    is_loopback,
    read_upload,
    resolve_token,
)
from pneumodet.service.review import (
    build_items,
    load_val_predictions,
    render_png,
    review_detail,
    side_markers,
)
from pneumodet.service.verdicts import (
    MAX_BOXES,
    VERDICTS_FILE,
    VerdictError,
    VerdictSaveError,
    VerdictStore,
    export_labels,
    short,
)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 64
#: uploads decoded and predicted at once, and how many more may wait (each decode is bounded: io.dicom)
DEFAULT_MAX_DECODES = 2
DEFAULT_MAX_QUEUE = 8
DISPLAY_PX = 512
log = logging.getLogger("pneumodet.service")


class VerdictBody(BaseModel):
    verdict: str = Field(max_length=20)  # correct, wrong or corrected
    # corrected: x, y, width, height in the image's own pixels
    boxes: list[list[float]] = Field(default=[], max_length=MAX_BOXES)


class ModelService:
    """The run's Detector; ``predict`` runs one request at a time."""

    def __init__(self, run: Path):
        self.detector = load_detector(run)
        self.paths = self.detector.paths
        self.config = self.detector.config
        self.info = self.detector.info
        self.pp: PostProcess = self.detector.postprocess
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0  # the most inferences ever running at once (tests check it stays 1)
        self.served = 0

    def predict(self, data: bytes, filename: str) -> tuple[dict, tuple]:
        """Return (the API's JSON body, (pixels, boxes_orig_xyxy, scores, scale) for drawing it)."""
        image = self.detector.read(data, filename)  # decoded as prepare and predict decode it
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                found = self.detector.detect(image)
            finally:
                self.active -= 1
                self.served += 1
        height, width = image.original_size
        # decoded again, larger, only to draw it
        shown = read_dicom_bytes(data, filename, max_decode_size=max(DISPLAY_PX, self.config.data.image_size))
        spacing = image.pixel_spacing  # (between rows, between columns) in mm
        boxes = []
        for (x, y, w, h), s in zip(found.boxes_orig_xywh, found.scores, strict=True):
            box = {"x": round(float(x), 1), "y": round(float(y), 1), "width": round(float(w), 1),
                   "height": round(float(h), 1), "score": round(float(s), 4)}
            if spacing:
                box.update(width_mm=round(float(w) * spacing[1], 1), height_mm=round(float(h) * spacing[0], 1))
            boxes.append(box)
        markers = side_markers(image.view_position, image.row_direction)
        return {
            "patient_id": found.patient_id,
            **self.call(found),
            "boxes": boxes,
            "image_score": round(found.image_score, 4),
            "gate": None if found.gate != found.gate else round(found.gate, 4),  # NaN: the model has no gate
            "view": image.view_position, "age": image.age, "sex": image.sex,
            "original_size": {"height": height, "width": width},
            "pixel_spacing_mm": list(spacing) if spacing else None,
            "sides": None if markers is None else {"image_left": markers[0], "image_right": markers[1]},
        }, (shown.pixels, found.boxes_orig_xyxy, found.scores, (shown.pixels.shape[1] / width,
                                                                 shown.pixels.shape[0] / height), markers)

    def call(self, found) -> dict:
        """Return the detector's positive/negative call on one image and, in words, why."""
        pp, n = self.pp, len(found.scores)
        if n:
            return {"call": "positive", "call_reason": f"{n} box{'es' if n > 1 else ''} kept at box confidence "
                    f">= {pp.score_threshold:g}" + (f"; the gate's probability {found.gate:.2f} >= {pp.gate_threshold:g}"
                                                  if pp.gate_threshold > 0 else "")}
        if pp.gate_threshold > 0 and found.gate == found.gate and found.gate < pp.gate_threshold:
            return {"call": "negative", "call_reason": f"the gate's probability of an opacity, {found.gate:.2f}, is "
                    f"below its threshold {pp.gate_threshold:g}"}
        return {"call": "negative", "call_reason": f"no box reached the box confidence threshold {pp.score_threshold:g}"}


def create_app(run: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *, hosts: set[str] | None = None,
               token: str | None = None, max_decodes: int = DEFAULT_MAX_DECODES,
               max_queue: int = DEFAULT_MAX_QUEUE) -> FastAPI:
    """Return the app for a run folder (model loaded now, once).

    ``hosts``: the Host header names to accept (None: any); ``token``: required on every request if set;
    ``max_decodes``: uploads decoded and predicted at once, ``max_queue``: how many more may wait (then 503).
    """
    if not max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be > 0, got {max_upload_mb:g}")
    if max_decodes < 1 or max_queue < 0:
        raise UserError(f"--max-decodes must be >= 1 and --max-queue >= 0, got {max_decodes} and {max_queue}")
    service = ModelService(Path(run))
    max_bytes = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="pneumodet", docs_url="/api/docs", openapi_url="/api/openapi.json")
    install_guard(app, hosts, token, upload_path="/api/predict")
    admission = Admission(max_decodes, max_queue)
    app.state.service, app.state.admission = service, admission
    review = _load_review(service)
    app.state.review = review
    verdicts = VerdictStore(service.paths.root / VERDICTS_FILE)
    app.state.verdicts = verdicts

    def review_item(index: int):
        if not 0 <= index < len(review["items"]):
            raise HTTPException(404, "no such review item")
        return review["items"][index]

    def with_verdict(item) -> dict:
        entry = verdicts.get(item.patient_id)
        return {**item.to_json(), "verdict": entry["verdict"] if entry else None}

    @app.get("/", response_class=HTMLResponse)
    def overview():
        return (STATIC / "index.html").read_text()

    @app.get("/review", response_class=HTMLResponse)
    def review_page():
        return (STATIC / "review.html").read_text()

    @app.get("/try", response_class=HTMLResponse)
    def try_page():
        return (STATIC / "try.html").read_text()

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str):
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise HTTPException(404, "not found")
        return FileResponse(path)

    @app.get("/api/health")
    def health():
        return {"status": "ok", "run": service.paths.root.name, "backbone": service.config.model.backbone,
                "image_size": service.config.data.image_size, "engine": service.detector.engine,
                "served": service.served}

    @app.get("/api/summary")
    def summary():
        metrics = json.loads(service.paths.metrics_json.read_text()) if service.paths.metrics_json.is_file() else None
        plots = sorted(p.name for p in service.paths.plots.glob("*.png"))
        external = [{key: report.get(key) for key in EXTERNAL_KEYS} | {
                     "plots": sorted(p.name for p in (service.paths.root / EXTERNAL / report["name"] / "plots")
                                     .glob("*.png"))} for report in external_reports(service.paths.root)]
        outcomes = {name: sum(it.outcome == name for it in review["items"]) for name in OUTCOMES}
        return {"run": service.paths.root.name, "metrics": metrics, "plots": plots, "external": external,
                "postprocess": service.pp.__dict__, "postprocess_words": service.pp.describe(),
                "review_items": len(review["items"]), "outcomes": outcomes, "review_note": review["note"]}

    @app.get("/plots/{name}")
    def plot(name: str):
        return _png(service.paths.plots, name)

    @app.get("/external/{report}/plots/{name}")
    def external_plot(report: str, name: str):
        reports = (service.paths.root / EXTERNAL).resolve()
        if (reports / report).resolve().parent != reports:  # one report folder, by its name, never a path
            raise HTTPException(404, "no such report")
        return _png(reports / report / "plots", name)

    @app.get("/api/review")
    def review_list(outcome: Annotated[str | None, Query()] = None, view: Annotated[str | None, Query()] = None):
        if outcome and outcome not in OUTCOMES:
            raise HTTPException(400, f"unknown outcome {short(outcome)}; use one of {', '.join(OUTCOMES)}")
        items = [it for it in review["items"] if (not outcome or it.outcome == outcome)
                 and (not view or it.view == view)]
        return {"items": [with_verdict(it) for it in items], "total": len(review["items"]), "note": review["note"],
                "views": sorted({it.view for it in review["items"]}),
                "reviewed": sum(verdicts.get(it.patient_id) is not None for it in review["items"])}

    @app.get("/api/review/labels.csv")
    def review_labels():
        """The reviewed images as a Kaggle-format labels CSV (pneumodet prepare DATA --labels FILE reads it)."""
        return PlainTextResponse(export_labels(review["items"], verdicts), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="reviewed_labels.csv"'})

    @app.get("/api/review/{index}")
    def review_one(index: int):
        item = review_item(index)
        return {**review_detail(item, review["cache"].pixels[item.row].shape), "verdict": verdicts.get(item.patient_id)}

    @app.put("/api/review/{index}/verdict")
    def put_verdict(index: int, body: VerdictBody):
        item = review_item(index)
        detail = review_detail(item, review["cache"].pixels[item.row].shape)
        try:
            return verdicts.set(item.patient_id, body.verdict, body.boxes, tuple(detail["original_size"]),
                                predicted_xywh=[box[:4] for box in detail["pred"]])
        except VerdictError as exc:
            raise HTTPException(422, str(exc)) from None
        except VerdictSaveError as exc:
            log.error("%s", exc)
            raise HTTPException(500, str(exc)) from None

    @app.delete("/api/review/{index}/verdict")
    def delete_verdict(index: int):
        try:
            verdicts.clear(review_item(index).patient_id)
        except VerdictSaveError as exc:
            log.error("%s", exc)
            raise HTTPException(500, str(exc)) from None
        return {"verdict": None}

    @app.get("/api/review/{index}/image.png")
    def review_image(index: int):
        item = review_item(index)
        pixels = np.asarray(review["cache"].pixels[item.row])
        png = render_png(pixels, item.truth_xyxy, item.pred_xyxy, item.pred_scores, item.scale,
                         markers=side_markers(item.view))
        return Response(png, media_type="image/png")

    @app.get("/api/review/{index}/raw.png")
    def review_raw(index: int):
        """The image alone, at the cache's size: the large view draws boxes and window/level itself."""
        item = review_item(index)
        return Response(render_png(np.asarray(review["cache"].pixels[item.row]), size=0), media_type="image/png")

    @app.post("/api/predict")
    async def predict(request: Request, image: Annotated[bool, Query()] = False):
        """Predict one DICOM: the ``file`` field of a form, or the raw body (application/dicom, ?filename=)."""
        with admission.admit():  # refused (503) before a byte is read when decodes and queue are full
            filename, data = await read_upload(request, max_bytes, f"{max_upload_mb:g} MB")
            if not data:
                raise HTTPException(400, "empty upload")
            name = Path(filename or "upload.dcm").name[:255]
            start = time.perf_counter()
            result, drawing = await run_in_threadpool(_predict_one, data, name)
        log.info("prediction in %.3f s", time.perf_counter() - start)  # no file name, no patient data
        if image:
            pixels, boxes, scores, scale, markers = drawing
            png = render_png(pixels, None, boxes, scores, scale, markers=markers)
            result["image_png"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return JSONResponse(result)

    def _predict_one(data: bytes, name: str):
        """Decode and predict one upload in a decode slot (a worker thread waits for one, or it is a 503)."""
        try:
            return admission.run(service.predict, data, name)
        except Busy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except DicomError as exc:
            status = 415 if "not a DICOM" in exc.reason else 422
            raise HTTPException(status, f"{name}: {exc.reason}") from None
        except Exception as exc:  # an upload never makes a 500: say it could not be used, log no patient data
            log.exception("prediction failed (%s)", type(exc).__name__)
            raise HTTPException(422, f"{name}: could not be processed ({type(exc).__name__})") from None

    install_error_handlers(app)
    return app


#: what the overview shows of each external report
EXTERNAL_KEYS = ("name", "rsna_map", "rsna_map_ci", "n_images", "n_images_counted", "tuned_on", "image_level",
                 "box_level")


def _png(folder: Path, name: str) -> FileResponse:
    """Return a PNG of ``folder`` by its name, never anything outside it (404)."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or path.suffix != ".png" or not path.is_file():
        raise HTTPException(404, "no such plot")
    return FileResponse(path, media_type="image/png")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON ``{"detail": text}``: a request that does not validate names the fields and
    what is wrong with them (never their values, which may be megabytes), and an unexpected failure says so
    without a traceback (the log has it)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                           for e in exc.errors()[:5])
        return JSONResponse({"detail": fields[:300]}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("unexpected %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server's log has the details"},
                            status_code=500)


def _load_review(service: ModelService) -> dict:
    raw_path = service.paths.predictions / "val.csv"
    if not raw_path.is_file():
        return {"items": [], "cache": None, "note": f"no {raw_path.name}: run pneumodet evaluate {service.paths.root}"}
    try:
        dataset = run_dataset(service.paths, service.config, service.info, "val")
    except (UserError, TypeError) as exc:
        return {"items": [], "cache": None, "note": f"val images unavailable: {exc}"}
    items = build_items(dataset, load_val_predictions(raw_path), service.pp)
    return {"items": items, "cache": dataset.cache, "note": ""}


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          token: str | None = None, allow_hosts: list[str] = (), max_decodes: int = DEFAULT_MAX_DECODES,
          max_queue: int = DEFAULT_MAX_QUEUE):
    """Start uvicorn with the app (access log off: URLs stay out of the logs)."""
    import uvicorn

    token = resolve_token(host, token)  # before the model loads: a refusal is immediate
    app = create_app(run, max_upload_mb, hosts=allowed_hosts(host, list(allow_hosts)), token=token,
                     max_decodes=max_decodes, max_queue=max_queue)
    shown = f"[{host}]" if ":" in host else host
    access = f"?token={token}" if token else ""
    where = "this machine only" if is_loopback(host) else "shared: every request needs the token"
    print(f"pneumodet: serving {run} on http://{shown}:{port}/{access}  ({where}; review: /review, try it: /try)",
          flush=True)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
