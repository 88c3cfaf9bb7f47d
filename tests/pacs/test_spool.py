"""The node's spool: what is received, predicted and sent, on disk at each step."""

import json

import pytest

from pneumodet.pacs.spool import Spool, _oldest_first, safe_uid


def test_an_instance_moves_from_inbox_to_outbox_to_the_sent_log(tmp_path):
    spool = Spool(tmp_path / "spool")
    source = spool.receive("1.2.3", lambda tmp: tmp.write_bytes(b"image"))
    assert spool.queued() == [source] and source.read_bytes() == b"image"
    results = spool.results_done(source, [("1.2.3.1", b"sr"), ("1.2.3.2", b"pr")])
    assert not spool.queued() and spool.pending() == results  # the results are queued before the source goes
    spool.delivered(results[0], "ORTHANC@127.0.0.1:4242")
    assert spool.pending() == results[1:] and spool.sent_uids() == ["1.2.3.1"]
    status = json.loads((tmp_path / "spool" / "status.json").read_text())
    assert (status["received"], status["predicted"], status["sent"], status["outbox"]) == (1, 1, 1, 1)
    assert not [p for p in (tmp_path / "spool").rglob(".*")]  # no temporary file left


def test_only_a_dicom_uid_names_a_spool_file():
    assert safe_uid(" 1.2.840.10008 ") == "1.2.840.10008"
    for bad in ("../../etc/passwd", "1.2.3/4", "", "1." * 40, "1.2.x"):
        with pytest.raises(ValueError):
            safe_uid(bad)


def test_a_file_removed_while_the_spool_is_listed_is_left_out(tmp_path, monkeypatch):
    """The sender removes what it delivered while the status is written: listing must not fail on it."""
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / "1.1.dcm").write_bytes(b"x")
    gone = folder / "1.2.dcm"
    real_glob = type(folder).glob
    monkeypatch.setattr(type(folder), "glob", lambda self, pattern: [*real_glob(self, pattern), gone])
    assert [p.name for p in _oldest_first(folder)] == ["1.1.dcm"]
