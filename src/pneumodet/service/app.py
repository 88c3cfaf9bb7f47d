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

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pneumodet.checkpoints import run_dataset
from pneumodet.errors import UserError
from pneumodet.service.guard import Admission, allowed_hosts, install_guard, is_loopback, resolve_token
from pneumodet.service.model_service import ModelService
from pneumodet.service.pages import router as pages_router
from pneumodet.service.predict_routes import router as predict_router
from pneumodet.service.review import build_items, load_val_predictions
from pneumodet.service.review_routes import router as review_router
from pneumodet.service.verdicts import VERDICTS_FILE, VerdictStore

DEFAULT_MAX_UPLOAD_MB = 64
#: uploads decoded and predicted at once, and how many more may wait (each decode is bounded: io.dicom)
DEFAULT_MAX_DECODES = 2
DEFAULT_MAX_QUEUE = 8
log = logging.getLogger("pneumodet.service")


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
    app = FastAPI(title="pneumodet", docs_url="/api/docs", openapi_url="/api/openapi.json")
    install_guard(app, hosts, token, upload_path="/api/predict")
    # what the routes share: the model, the upload limits, the review set and the verdicts saved on it
    app.state.service, app.state.admission = service, Admission(max_decodes, max_queue)
    app.state.max_upload_mb, app.state.max_upload_bytes = max_upload_mb, int(max_upload_mb * 1024 * 1024)
    app.state.review = _load_review(service)
    app.state.verdicts = VerdictStore(service.paths.root / VERDICTS_FILE)

    for routes in (pages_router, review_router, predict_router):
        app.include_router(routes)
    install_error_handlers(app)
    return app


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
