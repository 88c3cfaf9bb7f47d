"""``pneumodet listen``: a DICOM Storage SCP that predicts every chest radiograph it receives and sends the
findings back: an SR (TID 1500) and a Grayscale Softcopy Presentation State drawing the boxes.

```
PACS --C-STORE--> listen --fsync--> SPOOL/inbox --Detector--> SPOOL/outbox --C-STORE or STOW-RS--> PACS
```
A C-STORE is answered only once its instance is on disk (:mod:`pneumodet.pacs.spool`). One worker predicts the
inbox in order; one sender delivers the outbox, retrying with backoff while the destination is down. Answers:
0x0000 stored; 0x0122 a SOP class that is not a radiograph (CR, DX, Secondary Capture); 0x0124 a caller not on
the allow-list; 0xA700 the inbox is full (``max_queue``); 0xC210 a dataset that cannot be read. At most
``max_associations`` associations at once; more are rejected at association time.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pneumodet.errors import UserError
from pneumodet.pacs.spool import Spool, safe_uid

log = logging.getLogger("pneumodet.listen")

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RADIOGRAPHS = {CR: "CR", DX_PRESENTATION: "DX", DX_PROCESSING: "DX", SECONDARY_CAPTURE: "SC"}
SUCCESS, NOT_SUPPORTED, NOT_AUTHORIZED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0x0124, 0xA700, 0xC210
#: C-STORE statuses a destination answers for an instance it keeps (warnings included: coercion, elements discarded)
KEPT = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity: AE title, host and port (``AE@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        try:
            ae_title, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            peer = cls(ae_title.strip(), host.strip("[]"), int(port))
        except ValueError:
            raise UserError(f"--send-to {text[:80]!r}: expected AE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242") from None
        if not 0 < len(peer.ae_title) <= 16 or not 0 < peer.port < 65536:
            raise UserError(f"--send-to {text[:80]!r}: an AE title of 1-16 characters and a port of 1-65535")
        return peer

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def no_delay(assoc) -> None:
    """Send each PDU at once (TCP_NODELAY): a C-STORE is a few small PDUs and an answer, which Nagle's algorithm
    and the peer's delayed ACK otherwise hold back by tens of milliseconds each."""
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # another transport (TLS wrappers keep the option): leave it as it is
        pass


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class CStoreSender:
    """Send files to a peer over one association per batch; ``on_sent(path)`` after each the peer kept."""

    def __init__(self, peer: Peer, calling_ae: str):
        self.peer, self.calling_ae = peer, calling_ae

    def send(self, paths: list[Path], on_sent) -> None:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class in (ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage):
            ae.add_requested_context(sop_class)
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"{self.peer}: no association (down, or it refused {self.calling_ae})")
        no_delay(assoc)
        try:
            for path in paths:
                status = assoc.send_c_store(pydicom.dcmread(path))
                code = getattr(status, "Status", None)
                if code not in KEPT:
                    raise ConnectionError(f"{self.peer}: {path.name} not stored (status "
                                          f"{'none' if code is None else hex(code)})")
                on_sent(path)
        finally:
            assoc.release()


class StowSender:
    """Send files to a DICOMweb endpoint with STOW-RS."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def send(self, paths: list[Path], on_sent) -> None:
        import pydicom
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=self.url)
        for path in paths:
            client.store_instances(datasets=[pydicom.dcmread(path)])
            on_sent(path)

    def __str__(self) -> str:
        return self.url


class Node:
    """The listener, its worker and its sender, around one Detector and one spool."""

    def __init__(self, run: str | Path, spool: str | Path, *, destination: Peer | str, ae_title: str = "PNEUMODET",
                 host: str = "127.0.0.1", port: int = 11112, allow: list[str] = (), max_queue: int = 64,
                 max_associations: int = 8, retry_s: float = 2.0, max_retry_s: float = 60.0, detector=None):
        from pneumodet.detector import load_detector

        if not is_loopback(host) and not allow:
            raise UserError(f"--host {host} lets other machines send images: name who may with --allow AE@ADDRESS "
                            "(repeatable)")
        self.allow = [self._parse_allow(a) for a in allow]
        self.spool = Spool(spool)
        self.detector = detector or load_detector(run)
        self.run_name = Path(run).name
        self.ae_title, self.host, self.port = ae_title, host, port
        self.max_queue, self.max_associations = max_queue, max_associations
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.sender = (StowSender(destination) if isinstance(destination, str)
                       else CStoreSender(destination, ae_title))
        self.destination = str(destination)
        self.stopping = threading.Event()
        self.work, self.outgoing = threading.Event(), threading.Event()
        self.server, self.threads = None, []

    @staticmethod
    def _parse_allow(text: str) -> tuple[str, str]:
        ae_title, _, address = text.partition("@")
        if not ae_title or not address:
            raise UserError(f"--allow {text[:80]!r}: expected AE@ADDRESS, e.g. ORTHANC@10.0.0.5")
        return ae_title, address

    def start(self) -> Node:
        """Start listening, predicting and sending (threads); return self. What the spool holds from before a
        restart is predicted and sent first."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        for context in StoragePresentationContexts:  # every storage class: others get 0x0122, not silence
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_associations = self.max_associations
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_CONN_OPEN, lambda event: no_delay(event.assoc))]
        self.server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]
        for target in (self._predict_loop, self._send_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        self.work.set()
        self.outgoing.set()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.work.set()
        self.outgoing.set()
        if self.server is not None:
            self.server.shutdown()
        for thread in self.threads:
            thread.join(timeout=30)

    def _allowed(self, ae_title: str, address: str) -> bool:
        return not self.allow or any(ae_title.strip() == a and address == addr for a, addr in self.allow)

    def _store(self, event) -> int:
        """Answer a C-STORE: the instance is on disk before SUCCESS goes back."""
        requestor = event.assoc.requestor
        if not self._allowed(str(requestor.ae_title), str(requestor.address)):
            self.spool.count("refused")
            return NOT_AUTHORIZED
        if str(event.request.AffectedSOPClassUID) not in RADIOGRAPHS:
            self.spool.count("refused")
            return NOT_SUPPORTED
        if self.spool.depth() >= self.max_queue:
            self.spool.count("refused")
            return OUT_OF_RESOURCES
        try:
            ds = event.dataset
            uid = safe_uid(ds.SOPInstanceUID)
            if "PixelData" not in ds:
                raise ValueError("no pixel data")
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            self.spool.count("refused")
            self.spool.error(f"refused an instance from {requestor.ae_title}: {type(exc).__name__}: {exc}")
            return CANNOT_UNDERSTAND
        self.spool.receive(uid, lambda tmp: Path(tmp).write_bytes(data))
        self.work.set()
        return SUCCESS

    def _predict_loop(self) -> None:
        while not self.stopping.is_set():
            queued = self.spool.queued()
            if not queued:
                _nap(self.work, 1.0)
                continue
            for path in queued:
                if self.stopping.is_set():
                    return
                try:
                    self._predict(path)
                except Exception as exc:  # one instance must never stop the node: set it aside, say why
                    self._set_aside(path, f"{type(exc).__name__}: {exc}")
                self.outgoing.set()

    def _predict(self, path: Path) -> None:
        """Predict one received instance and queue its SR and presentation state; an unreadable one goes to
        SPOOL/failed/ with the reason in the status."""
        from pydicom.uid import generate_uid

        from pneumodet.report.dicom_sr import build_sr, source_header
        from pneumodet.report.gsps import build_gsps

        start = time.perf_counter()
        try:
            found = self.detector.detect(path)
            source = source_header(path, warn=lambda message: None)
        except UserError as exc:
            self._set_aside(path, str(exc))
            return
        uid = str(source.SOPInstanceUID)

        def derived(kind: str) -> str:  # the same source gives the same result UIDs, however often it is sent
            return generate_uid(entropy_srcs=[uid, kind, self.run_name])

        args = (source, found.boxes_orig_xyxy, found.scores, found.image_score)
        results = []
        for kind, build in (("sr", build_sr), ("pr", build_gsps)):
            dataset = build(*args, run_name=self.run_name, sop_instance_uid=derived(kind),
                            series_instance_uid=generate_uid(entropy_srcs=[str(source.StudyInstanceUID), kind,
                                                                           self.run_name]))
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            results.append((str(dataset.SOPInstanceUID), buffer.getvalue()))
        self.spool.results_done(path, results)
        log.info("study %s: %d box(es), image score %.2f, %.0f ms", source.StudyInstanceUID, len(found.scores),
                 found.image_score, 1000 * (time.perf_counter() - start))

    def _set_aside(self, path: Path, reason: str) -> None:
        failed = self.spool.root / "failed"
        failed.mkdir(exist_ok=True)
        path.replace(failed / path.name)
        self.spool.count("failed")
        self.spool.error(f"{path.name}: {reason}")

    def _send_loop(self) -> None:
        wait = self.retry_s
        while not self.stopping.is_set():
            pending = self.spool.pending()
            if not pending:
                _nap(self.outgoing, 1.0)
                continue
            try:
                self.sender.send(pending, lambda path: self.spool.delivered(path, self.destination))
                wait = self.retry_s
            except Exception as exc:  # the destination is down or refuses: keep the results, try again later
                self.spool.error(f"sending to {self.destination}: {type(exc).__name__}: {exc}")
                _nap(self.outgoing, wait)
                wait = min(2 * wait, self.max_retry_s)


def _nap(wake: threading.Event, seconds: float) -> None:
    """Wait until ``wake`` is set (new work, or stop) or ``seconds`` pass; then clear it for the next wait."""
    wake.wait(seconds)
    wake.clear()


def listen(run: str | Path, spool: str | Path, **options) -> None:
    """Run the node until interrupted."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # one line per study; the libraries' chatter stays out
    node = Node(run, spool, **options).start()
    print(f"pneumodet: listening as {node.ae_title} on {node.host}:{node.port}, results to {node.destination}, "
          f"spool {Path(spool)} (status: {node.spool.status_path})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
