"""The DICOM node: a real Orthanc sends radiographs and receives the findings; bad input gets its DIMSE status;
nothing received is lost across an outage or a kill -9."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, ComputedRadiographyImageStorage, Verification

from pneumodet.detector import load_detector
from pneumodet.io.layout import TEST_IMAGES
from pneumodet.pacs.node import (
    CANNOT_UNDERSTAND,
    NOT_AUTHORIZED,
    NOT_SUPPORTED,
    OUT_OF_RESOURCES,
    SUCCESS,
    Node,
    Peer,
)
from pneumodet.pacs.spool import Spool
from pneumodet.report.dicom_sr import read_sr_boxes
from pneumodet.report.gsps import read_gsps_boxes
from tests.pacs.orthanc import Orthanc, available, free_port

JPEG = "1.2.840.10008.1.2.4.50"
needs_orthanc = pytest.mark.skipif(not available(), reason="Debian's orthanc and orthanc-dicomweb are not installed "
                                   "(make test installs them when run as root)")


def _images(synth_data, n):
    return sorted((synth_data / TEST_IMAGES).glob("*.dcm"))[:n]


def _send(port: int, datasets, calling: str = "MODALITY", sop_class=ComputedRadiographyImageStorage) -> list[int]:
    """C-STORE each dataset to the node over one association; return the statuses."""
    ae = AE(ae_title=calling)
    for syntax in (JPEG, "1.2.840.10008.1.2.1"):  # one context each: the SCP accepts one syntax per context
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMODET")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _wait(condition, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def detector(trained_run):
    return load_detector(trained_run, overrides={"score_threshold": 0.0, "gate_threshold": 0.0})


@pytest.fixture
def orthanc(tmp_path):
    if not available():
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (make test installs them as root)")
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


@needs_orthanc
@pytest.mark.slow
def test_orthanc_sends_radiographs_and_gets_back_the_boxes_predict_finds(orthanc, trained_run, detector, synth_data,
                                                                          tmp_path):
    from dicomweb_client.api import DICOMwebClient

    files = _images(synth_data, 3)
    ids = [orthanc.upload(f) for f in files]
    node = Node(trained_run, tmp_path / "spool", destination=Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port),
                port=0, detector=detector).start()
    try:
        orthanc.add_modality("pneumodet", "PNEUMODET", node.port)
        orthanc.rest("/modalities/pneumodet/store", "POST", {"Resources": ids, "Synchronous": True})
        _wait(lambda: node.spool.status()["sent"] == 2 * len(files))
    finally:
        node.stop()
    web = DICOMwebClient(url=f"{orthanc.url}/dicom-web")
    for path in files:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        found = detector.detect(path)
        results = {}
        for series in web.search_for_series(study_instance_uid=source.StudyInstanceUID):
            modality = series["00080060"]["Value"][0]
            if modality in ("SR", "PR"):
                uid = series["0020000E"]["Value"][0]
                (instance,) = web.search_for_instances(study_instance_uid=source.StudyInstanceUID,
                                                       series_instance_uid=uid)
                results[modality] = web.retrieve_instance(source.StudyInstanceUID, uid, instance["00080018"]["Value"][0])
        assert set(results) == {"SR", "PR"}, results.keys()
        results["SR"].save_as(tmp_path / "sr.dcm")
        boxes, scores, image_score, references = read_sr_boxes(tmp_path / "sr.dcm")
        np.testing.assert_allclose(boxes, found.boxes_orig_xyxy, atol=0.01)
        np.testing.assert_allclose(scores, found.scores, atol=1e-6)
        drawn, texts = read_gsps_boxes(results["PR"])
        np.testing.assert_allclose(drawn, found.boxes_orig_xyxy, atol=0.01)
        assert len(found.scores) > 0 and len(texts) == len(found.scores) + 1
        referenced = results["PR"].ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
        assert referenced == source.SOPInstanceUID  # drawn over the image it came from


@needs_orthanc
@pytest.mark.slow
def test_results_wait_while_the_pacs_is_down_and_arrive_once_it_is_back(tmp_path, trained_run, detector, synth_data):
    orthanc = Orthanc(tmp_path / "orthanc")  # not started: the PACS is down
    node = Node(trained_run, tmp_path / "spool", destination=Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port),
                port=0, detector=detector, retry_s=0.2, max_retry_s=1.0).start()
    try:
        files = _images(synth_data, 3)
        assert _send(node.port, [pydicom.dcmread(f) for f in files]) == [SUCCESS] * 3
        _wait(lambda: node.spool.status()["outbox"] == 6 and node.spool.status()["last_errors"])
        assert node.spool.status()["sent"] == 0 and "no association" in node.spool.status()["last_errors"][-1]["error"]
        orthanc.start()
        try:
            _wait(lambda: node.spool.status()["sent"] == 6)
            time.sleep(1.5)  # a second round of the sender would send again here if it were going to
            stored = [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances()]
        finally:
            orthanc.stop()
    finally:
        node.stop()
    assert len(stored) == len(set(stored)) == 6
    sent = node.spool.sent_uids()
    assert sorted(sent) == sorted(stored) and len(set(sent)) == 6 and not node.spool.pending()


class Blocking:
    """A stand-in detector that waits until it is let go, so received instances stay queued."""

    def __init__(self, detector):
        self.detector, self.go = detector, threading.Event()

    def detect(self, path):
        self.go.wait(60)
        return self.detector.detect(path)


def test_bad_input_gets_its_dimse_status_and_the_node_keeps_serving(tmp_path, trained_run, detector, synth_data):
    stub = Blocking(detector)
    node = Node(trained_run, tmp_path / "spool", destination=Peer("NOBODY", "127.0.0.1", free_port()), port=0,
                detector=stub, allow=["MODALITY@127.0.0.1"], max_queue=2, max_associations=2).start()
    try:
        image = pydicom.dcmread(_images(synth_data, 1)[0])
        report = pydicom.Dataset()  # a non-image SOP class (an SR): stored nowhere, refused by class
        report.SOPClassUID, report.SOPInstanceUID = ComprehensiveSRStorage, "1.2.3.4"
        report.file_meta = pydicom.dataset.FileMetaDataset()
        report.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        assert _send(node.port, [report], sop_class=ComprehensiveSRStorage) == [NOT_SUPPORTED]
        no_pixels = pydicom.dcmread(_images(synth_data, 1)[0])
        del no_pixels.PixelData
        no_pixels.SOPInstanceUID = "1.2.3.5"
        assert _send(node.port, [no_pixels]) == [CANNOT_UNDERSTAND]
        assert _send(node.port, [image], calling="INTRUDER") == [NOT_AUTHORIZED]
        second = pydicom.dcmread(_images(synth_data, 2)[1])
        third = pydicom.dcmread(_images(synth_data, 3)[2])
        # the worker holds the first; two more fill the inbox (max 2), the next is refused for resources
        assert _send(node.port, [image, second, third]) == [SUCCESS, SUCCESS, OUT_OF_RESOURCES]
        # a flood of associations: beyond max_associations they are rejected, and the node still answers after
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        flood = [ae.associate("127.0.0.1", node.port, ae_title="PNEUMODET") for _ in range(6)]
        assert sum(a.is_established for a in flood) == 2
        for a in flood:
            if a.is_established:
                a.release()
        stub.go.set()
        _wait(lambda: node.spool.status()["predicted"] == 2)
        assert _send(node.port, [third]) == [SUCCESS]
        _wait(lambda: node.spool.status()["predicted"] == 3)
        status = node.spool.status()
        assert status["refused"] == 4 and status["received"] == 3 and status["failed"] == 0
        assert any("no pixel data" in e["error"] for e in status["last_errors"])
    finally:
        stub.go.set()
        node.stop()
    assert (tmp_path / "spool" / "status.json").is_file()


def _listen(run, spool: Path, port: int, destination: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pneumodet.cli", "listen", str(run), "--spool", str(spool),
                             "--port", str(port), "--send-to", destination], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _listening(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMODET")
    if assoc.is_established:
        assoc.release()
        return True
    return False


@needs_orthanc
@pytest.mark.slow
def test_nothing_received_is_lost_across_kill_9_and_restart(tmp_path, trained_run, synth_data, orthanc):
    spool, port = tmp_path / "spool", free_port()
    down = f"ORTHANC@127.0.0.1:{free_port()}"  # nobody there: results stay in the outbox
    node = _listen(trained_run, spool, port, down)
    try:
        _wait(lambda: _listening(port))
        files = _images(synth_data, 4)
        assert _send(port, [pydicom.dcmread(f) for f in files]) == [SUCCESS] * 4
    finally:
        os.kill(node.pid, signal.SIGKILL)  # answered SUCCESS: each instance must be on disk already
        node.wait()
    held = Spool(spool)  # each instance is still to predict (inbox) or has its two results waiting (outbox)
    assert 2 * len(held.queued()) + len(held.pending()) >= 8 and not held.sent_uids()
    node = _listen(trained_run, spool, port, f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    try:
        _wait(lambda: len(Spool(spool).sent_uids()) == 8, seconds=120)
    finally:
        node.terminate()
        node.wait(timeout=30)
    stored = [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances()]
    assert len(stored) == len(set(stored)) == 8 and sorted(Spool(spool).sent_uids()) == sorted(stored)


@needs_orthanc
@pytest.mark.slow
def test_predict_pulls_a_study_over_dicomweb(orthanc, trained_run, synth_data, tmp_path):
    from pneumodet.cli import main

    path = _images(synth_data, 1)[0]
    orthanc.upload(path)
    study = pydicom.dcmread(path, stop_before_pixels=True)
    out = tmp_path / "sub.csv"
    assert main(["predict", str(trained_run), str(tmp_path / "pulled"), "--out", str(out), "--workers", "0",
                 "--dicomweb", f"{orthanc.url}/dicom-web", "--study", study.StudyInstanceUID]) == 0
    assert [p.name for p in (tmp_path / "pulled").iterdir()] == [f"{study.SOPInstanceUID}.dcm"]
    assert out.read_text().splitlines()[1].startswith(f"{study.SOPInstanceUID},")
    assert main(["predict", str(trained_run), str(tmp_path / "x"), "--out", str(out), "--dicomweb",
                 f"{orthanc.url}/dicom-web", "--study", "1.2.3"]) == 2  # no such study: one line


@needs_orthanc
@pytest.mark.slow
def test_results_go_by_stow_rs_too(orthanc, trained_run, detector, synth_data, tmp_path):
    node = Node(trained_run, tmp_path / "spool", destination=f"{orthanc.url}/dicom-web", port=0,
                detector=detector).start()
    try:
        assert _send(node.port, [pydicom.dcmread(f) for f in _images(synth_data, 2)]) == [SUCCESS] * 2
        _wait(lambda: node.spool.status()["sent"] == 4)
    finally:
        node.stop()
    modalities = sorted(orthanc.rest(f"/instances/{i['ID']}/tags?simplify")["Modality"] for i in orthanc.instances())
    assert modalities == ["PR", "PR", "SR", "SR"]


def test_the_command_line_refuses_what_it_cannot_serve_in_one_line(trained_run, tmp_path, capsys):
    from pneumodet.cli import main

    spool = str(tmp_path / "spool")
    for args, says in ((["--send-to", "ORTHANC@127.0.0.1"], "expected AE@HOST:PORT"),
                       ([], "give one destination"),
                       (["--send-to", "A@h:1", "--stow", "http://x"], "give one destination"),
                       (["--send-to", "A@127.0.0.1:1", "--host", "0.0.0.0"], "--allow AE@ADDRESS")):
        assert main(["listen", str(trained_run), "--spool", spool, *args]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert main(["listen", str(trained_run), "--spool", spool, "--status"]) == 2  # asked of no spool: none made
    assert "not a spool of pneumodet listen" in capsys.readouterr().err and not (tmp_path / "spool").exists()
    Spool(spool).receive("1.2.3", lambda tmp: tmp.write_bytes(b"x"))
    assert main(["listen", str(trained_run), "--spool", spool, "--status"]) == 0
    assert '"inbox": 1' in capsys.readouterr().out
