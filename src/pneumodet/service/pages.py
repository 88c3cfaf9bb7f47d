"""The pages (overview, review, try it), their static files, the run's plots and the summary the overview shows."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from pneumodet.evaluate import EXTERNAL, external_reports
from pneumodet.metrics import OUTCOMES

STATIC = Path(__file__).parent / "static"
#: what the overview shows of each external report
EXTERNAL_KEYS = ("name", "rsna_map", "rsna_map_ci", "n_images", "n_images_counted", "tuned_on", "image_level",
                 "box_level")
router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview():
    return (STATIC / "index.html").read_text()


@router.get("/review", response_class=HTMLResponse)
def review_page():
    return (STATIC / "review.html").read_text()


@router.get("/try", response_class=HTMLResponse)
def try_page():
    return (STATIC / "try.html").read_text()


@router.get("/favicon.ico")
def favicon():
    return Response(status_code=204)


@router.get("/static/{name}")
def static(name: str):
    path = (STATIC / name).resolve()
    if path.parent != STATIC.resolve() or not path.is_file():
        raise HTTPException(404, "not found")
    return FileResponse(path)


@router.get("/api/health")
def health(request: Request):
    service = request.app.state.service
    return {"status": "ok", "run": service.paths.root.name, "backbone": service.config.model.backbone,
            "image_size": service.config.data.image_size, "engine": service.detector.backend,
            "served": service.served}


@router.get("/api/summary")
def summary(request: Request):
    service, review = request.app.state.service, request.app.state.review
    paths = service.paths
    metrics = json.loads(paths.metrics_json.read_text()) if paths.metrics_json.is_file() else None
    plots = sorted(p.name for p in paths.plots.glob("*.png"))
    external = [{key: report.get(key) for key in EXTERNAL_KEYS} | {
                 "plots": sorted(p.name for p in (paths.root / EXTERNAL / report["name"] / "plots").glob("*.png"))}
                for report in external_reports(paths.root)]
    outcomes = {name: sum(it.outcome == name for it in review["items"]) for name in OUTCOMES}
    return {"run": paths.root.name, "metrics": metrics, "plots": plots, "external": external,
            "postprocess": service.pp.__dict__, "postprocess_words": service.pp.describe(),
            "review_items": len(review["items"]), "outcomes": outcomes, "review_note": review["note"]}


@router.get("/plots/{name}")
def plot(request: Request, name: str):
    return _png(request.app.state.service.paths.plots, name)


@router.get("/external/{report}/plots/{name}")
def external_plot(request: Request, report: str, name: str):
    reports = (request.app.state.service.paths.root / EXTERNAL).resolve()
    if (reports / report).resolve().parent != reports:  # one report folder, by its name, never a path
        raise HTTPException(404, "no such report")
    return _png(reports / report / "plots", name)


def _png(folder: Path, name: str) -> FileResponse:
    """Return a PNG of ``folder`` by its name, never anything outside it (404)."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or path.suffix != ".png" or not path.is_file():
        raise HTTPException(404, "no such plot")
    return FileResponse(path, media_type="image/png")
