"""The reviewer's API: the val images worst first, each with its boxes, and the verdicts saved on them."""

from __future__ import annotations

import logging
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from pneumodet.metrics import OUTCOMES
from pneumodet.service.review import render_png, review_detail, side_markers
from pneumodet.service.verdicts import MAX_BOXES, VerdictError, VerdictSaveError, export_labels, short

log = logging.getLogger("pneumodet.service")
router = APIRouter()


class VerdictBody(BaseModel):
    verdict: str = Field(max_length=20)  # correct, wrong or corrected
    # corrected: x, y, width, height in the image's own pixels
    boxes: list[list[float]] = Field(default=[], max_length=MAX_BOXES)


def _item(request: Request, index: int):
    items = request.app.state.review["items"]
    if not 0 <= index < len(items):
        raise HTTPException(404, "no such review item")
    return items[index]


def _pixels(request: Request, item) -> np.ndarray:
    return np.asarray(request.app.state.review["cache"].pixels[item.row])


@router.get("/api/review")
def review_list(request: Request, outcome: Annotated[str | None, Query()] = None,
                view: Annotated[str | None, Query()] = None):
    review, verdicts = request.app.state.review, request.app.state.verdicts
    if outcome and outcome not in OUTCOMES:
        raise HTTPException(400, f"unknown outcome {short(outcome)}; use one of {', '.join(OUTCOMES)}")
    items = [it for it in review["items"] if (not outcome or it.outcome == outcome) and (not view or it.view == view)]

    def with_verdict(item) -> dict:
        entry = verdicts.get(item.patient_id)
        return {**item.to_json(), "verdict": entry["verdict"] if entry else None}

    return {"items": [with_verdict(it) for it in items], "total": len(review["items"]), "note": review["note"],
            "views": sorted({it.view for it in review["items"]}),
            "reviewed": sum(verdicts.get(it.patient_id) is not None for it in review["items"])}


@router.get("/api/review/labels.csv")
def review_labels(request: Request):
    """The reviewed images as a Kaggle-format labels CSV (pneumodet prepare DATA --labels FILE reads it)."""
    return PlainTextResponse(export_labels(request.app.state.review["items"], request.app.state.verdicts),
                             media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="reviewed_labels.csv"'})


@router.get("/api/review/{index}")
def review_one(request: Request, index: int):
    item = _item(request, index)
    return {**review_detail(item, _pixels(request, item).shape), "verdict": request.app.state.verdicts.get(item.patient_id)}


@router.put("/api/review/{index}/verdict")
def put_verdict(request: Request, index: int, body: VerdictBody):
    item = _item(request, index)
    detail = review_detail(item, _pixels(request, item).shape)
    try:
        return request.app.state.verdicts.set(item.patient_id, body.verdict, body.boxes,
                                              tuple(detail["original_size"]),
                                              predicted_xywh=[box[:4] for box in detail["pred"]])
    except VerdictError as exc:
        raise HTTPException(422, str(exc)) from None
    except VerdictSaveError as exc:
        log.error("%s", exc)
        raise HTTPException(500, str(exc)) from None


@router.delete("/api/review/{index}/verdict")
def delete_verdict(request: Request, index: int):
    try:
        request.app.state.verdicts.clear(_item(request, index).patient_id)
    except VerdictSaveError as exc:
        log.error("%s", exc)
        raise HTTPException(500, str(exc)) from None
    return {"verdict": None}


@router.get("/api/review/{index}/image.png")
def review_image(request: Request, index: int):
    item = _item(request, index)
    png = render_png(_pixels(request, item), item.truth_orig_xyxy, item.pred_orig_xyxy, item.pred_scores, item.scale,
                     markers=side_markers(item.view))
    return Response(png, media_type="image/png")


@router.get("/api/review/{index}/raw.png")
def review_raw(request: Request, index: int):
    """The image alone, at the cache's size: the large view draws boxes and window/level itself."""
    return Response(render_png(_pixels(request, _item(request, index)), size=0), media_type="image/png")
