import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pneumodet.data.prepare import prepare
from pneumodet.errors import UserError
from pneumodet.io.labels import read_labels
from pneumodet.io.layout import TRAIN_IMAGES
from pneumodet.service.app import create_app
from pneumodet.service.verdicts import VERDICTS_FILE, VerdictError, VerdictStore


def test_a_store_keeps_verdicts_across_instances_and_checks_them(tmp_path):
    path = tmp_path / "review" / "verdicts.json"
    store = VerdictStore(path)
    store.set("a", "corrected", [[10, 20, 30, 40]], size=(100, 100))
    store.set("b", "wrong")
    store.set("c", "correct", predicted_xywh=[[1, 2, 3, 4]])
    assert store.get("c")["boxes"] == [[1.0, 2.0, 3.0, 4.0]]
    store.clear("c")
    again = VerdictStore(path)
    assert again.get("a")["boxes"] == [[10.0, 20.0, 30.0, 40.0]] and again.get("b")["verdict"] == "wrong"
    assert again.get("c") is None
    assert [p.name for p in path.parent.iterdir()] == ["verdicts.json"]  # no temporary file left
    for bad in ([[90, 20, 30, 40]], [[1, 2, 0, 5]], [[1, 2, 3]], [[-1, 0, 5, 5]], [[0, 0, float("nan"), 3]], [],
                [[1, 2, 3, 4, 5, 6, 7, 8]]):
        with pytest.raises(VerdictError):
            store.set("a", "corrected", bad, size=(100, 100))
    with pytest.raises(VerdictError, match="unknown verdict"):
        store.set("a", "maybe")
    with pytest.raises(VerdictError, match="drawn boxes go with the verdict corrected"):
        store.set("a", "wrong", [[1, 1, 5, 5]])
    assert VerdictStore(path).get("a")["boxes"] == [[10.0, 20.0, 30.0, 40.0]]  # refused changes left it alone
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a verdicts file"):
        VerdictStore(path)


def test_verdicts_survive_a_restart_and_export_as_labels_prepare_reads(run_with_boxes, synth_data, tmp_path):
    client = TestClient(create_app(run_with_boxes))
    items = client.get("/api/review").json()["items"]
    assert len(items) >= 3 and all(it["verdict"] is None for it in items)
    predicted = next(i for i, it in enumerate(items) if it["n_pred"] > 0)
    others = [i for i in range(len(items)) if i != predicted]
    detail = client.get(f"/api/review/{others[0]}").json()
    height, width = detail["original_size"]
    assert detail["verdict"] is None and len(detail["truth"]) == detail["n_truth"]
    drawn = [[100.0, 150.0, 200.5, 250.0], [600.0, 300.0, 150.0, 180.0]]
    assert client.put(f"/api/review/{others[0]}/verdict", json={"verdict": "corrected", "boxes": drawn}).status_code == 200
    assert client.put(f"/api/review/{predicted}/verdict", json={"verdict": "correct"}).status_code == 200
    assert client.put(f"/api/review/{others[1]}/verdict", json={"verdict": "wrong"}).status_code == 200
    outside = client.put(f"/api/review/{others[2] if len(others) > 2 else others[1]}/verdict",
                         json={"verdict": "corrected", "boxes": [[width - 10, 0, 50, 50]]})
    assert outside.status_code == 422 and "outside" in outside.json()["detail"]
    assert client.put(f"/api/review/{len(items)}/verdict", json={"verdict": "wrong"}).status_code == 404
    assert (run_with_boxes / VERDICTS_FILE).is_file()

    restarted = TestClient(create_app(run_with_boxes))  # a new server process reads what the first one saved
    listed = restarted.get("/api/review").json()
    assert listed["reviewed"] == 3
    assert [listed["items"][i]["verdict"] for i in (others[0], predicted, others[1])] == ["corrected", "correct", "wrong"]
    response = restarted.get("/api/review/labels.csv")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    export = tmp_path / "reviewed_labels.csv"
    export.write_bytes(response.content)

    labels = read_labels(export)
    assert not labels.problems and len(labels.annotations) == 3
    by_id = {i: restarted.get(f"/api/review/{i}").json()["patient_id"] for i in (others[0], predicted, others[1])}
    np.testing.assert_allclose(labels.annotations[by_id[others[0]]].boxes_xywh, drawn, atol=0.01)
    want = np.array([b[:4] for b in restarted.get(f"/api/review/{predicted}").json()["pred"]])
    np.testing.assert_allclose(labels.annotations[by_id[predicted]].boxes_xywh, want, atol=0.06)
    assert not labels.annotations[by_id[others[1]]].positive

    # the export is training data: prepare reads it with the original images
    data = tmp_path / "data"
    data.mkdir()
    (data / TRAIN_IMAGES).symlink_to(synth_data / TRAIN_IMAGES)
    result = prepare(data, tmp_path / "cache", size_px=64, labels_csv=export, progress=False, workers=1, folds=2)
    images = pd.read_csv(result.cache_dir / "images.csv", dtype={"patient_id": str})
    assert sorted(images["patient_id"]) == sorted(by_id.values())
    boxes = pd.read_csv(result.cache_dir / "boxes.csv", dtype={"patient_id": str})
    mine = boxes[boxes["patient_id"] == by_id[others[0]]][["x", "y", "width", "height"]].to_numpy()
    np.testing.assert_allclose(mine, drawn, atol=0.01)

    assert restarted.delete(f"/api/review/{others[1]}/verdict").status_code == 200
    assert TestClient(create_app(run_with_boxes)).get("/api/review").json()["reviewed"] == 2


def test_the_raw_image_is_the_cache_image_without_boxes(run_with_boxes):
    import io

    from PIL import Image

    client = TestClient(create_app(run_with_boxes))
    raw = client.get("/api/review/0/raw.png")
    assert raw.status_code == 200
    image = Image.open(io.BytesIO(raw.content))
    assert image.mode == "L" and image.size == (64, 64)
