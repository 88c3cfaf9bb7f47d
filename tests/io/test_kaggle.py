import os
import subprocess
import sys
import zipfile

import pytest

from pneumodet.errors import UserError
from pneumodet.io import kaggle


def _env_without_credentials(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env["HOME"] = str(home)
    return env


def test_no_credentials_exits_2_without_touching_the_network(tmp_path):
    env = _env_without_credentials(tmp_path)
    # a sitecustomize that makes any connection attempt fail loudly: no credentials must mean no waiting
    (tmp_path / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise SystemExit('network touched')\n"
        "socket.create_connection = _refuse\nsocket.socket.connect = _refuse\n")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", "download", str(tmp_path / "rsna")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "kaggle.json" in lines[0] and "KAGGLE_USERNAME" in lines[0]
    assert "rules" in lines[0] and "network touched" not in proc.stderr


def test_credentials_found_in_env_and_file(tmp_path):
    assert kaggle.find_credentials({"HOME": str(tmp_path)}) is None
    assert kaggle.find_credentials({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}) == "KAGGLE_USERNAME/KAGGLE_KEY"
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle.find_credentials({"HOME": str(tmp_path)}).endswith("kaggle.json")
    (tmp_path / ".kaggle" / "kaggle.json").write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        kaggle.find_credentials({"HOME": str(tmp_path)})


def test_offline_fails_fast_with_a_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    monkeypatch.setattr(kaggle, "can_reach", lambda *a, **k: False)
    with pytest.raises(UserError, match="cannot reach"):
        kaggle.download_competition(tmp_path / "rsna")


def test_check_complete_and_extract(tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle, "EXPECTED", {"labels.csv": None, "images": 2})
    assert kaggle.check_complete(tmp_path) == ["labels.csv", "images (0/2 .dcm files)"]
    archive = tmp_path / "comp.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("labels.csv", "patientId\n")
        zf.writestr("images/a.dcm", b"x")
        zf.writestr("images/b.dcm", b"y")
    kaggle.extract(archive, tmp_path)
    assert not archive.exists()
    assert kaggle.check_complete(tmp_path) == []
    assert kaggle.download_competition(tmp_path) == tmp_path  # complete: nothing to do, no credentials needed


def test_extract_rejects_a_broken_archive(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError, match="not a valid zip"):
        kaggle.extract(tmp_path / "bad.zip", tmp_path)


def test_extract_rejects_path_escape(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(UserError, match="escapes"):
        kaggle.extract(archive, tmp_path / "dest")
