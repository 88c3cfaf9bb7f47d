"""``POST /api/predict``: one DICOM upload in, the detector's boxes out (and, with ``?image=1``, a drawing)."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pneumodet.io.dicom import DicomError
from pneumodet.service.guard import Busy, read_upload
from pneumodet.service.review import render_png

log = logging.getLogger("pneumodet.service")
router = APIRouter()


@router.post("/api/predict")
async def predict(request: Request, image: Annotated[bool, Query()] = False):
    """Predict one DICOM: the ``file`` field of a form, or the raw body (application/dicom, ?filename=)."""
    state = request.app.state
    with state.admission.admit():  # refused (503) before a byte is read when decodes and queue are full
        filename, data = await read_upload(request, state.max_upload_bytes, f"{state.max_upload_mb:g} MB")
        if not data:
            raise HTTPException(400, "empty upload")
        name = Path(filename or "upload.dcm").name[:255]
        start = time.perf_counter()
        result, drawing = await run_in_threadpool(_predict_one, state, data, name)
    log.info("prediction in %.3f s", time.perf_counter() - start)  # no file name, no patient data
    if image:
        pixels, boxes, scores, scale, markers = drawing
        png = render_png(pixels, None, boxes, scores, scale, markers=markers)
        result["image_png"] = "data:image/png;base64," + base64.b64encode(png).decode()
    return JSONResponse(result)


def _predict_one(state, data: bytes, name: str):
    """Decode and predict one upload in a decode slot (a worker thread waits for one, or it is a 503)."""
    try:
        return state.admission.run(state.service.predict, data, name)
    except Busy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except DicomError as exc:
        status = 415 if "not a DICOM" in exc.reason else 422
        raise HTTPException(status, f"{name}: {exc.reason}") from None
    except Exception as exc:  # an upload never makes a 500: say it could not be used, log no patient data
        log.exception("prediction failed (%s)", type(exc).__name__)
        raise HTTPException(422, f"{name}: could not be processed ({type(exc).__name__})") from None
