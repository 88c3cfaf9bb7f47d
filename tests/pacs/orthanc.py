"""A throwaway Orthanc (Debian's orthanc and orthanc-dicomweb) on free loopback ports, for the node's tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> bool:
    return shutil.which("Orthanc") is not None and PLUGIN.is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Orthanc with its storage in ``folder``: ``start()``, ``stop()`` (what it stored stays), REST and DICOMweb."""

    def __init__(self, folder: Path, ae_title: str = "ORTHANC"):
        self.folder, self.ae_title = Path(folder), ae_title
        self.dicom_port, self.http_port = free_port(), free_port()
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        config = {"Name": "test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
                  "DicomAet": ae_title, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1}
        (self.folder / "config.json").write_text(json.dumps(config))
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        log = open(self.folder / "orthanc.log", "a")
        self.process = subprocess.Popen(["Orthanc", str(self.folder / "config.json")], stdout=log, stderr=log)
        for _ in range(100):
            try:
                self.rest("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def rest(self, path: str, method: str = "GET", body=None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            payload = answer.read()
        return json.loads(payload) if payload[:1] in (b"{", b"[") else payload

    def upload(self, path: Path) -> str:
        """Store a DICOM file in Orthanc; return its Orthanc id."""
        return self.rest("/instances", "POST", raw=Path(path).read_bytes())["ID"]

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        self.rest(f"/modalities/{name}", "PUT", {"AET": ae_title, "Host": "127.0.0.1", "Port": port})

    def instances(self) -> list[dict]:
        """Return every instance Orthanc holds, with its main DICOM tags."""
        return [self.rest(f"/instances/{i}") for i in self.rest("/instances")]
