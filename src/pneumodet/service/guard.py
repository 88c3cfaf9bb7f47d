"""What stands between the network and the review app: the Host check, the access token, the upload cap.

- Host: a service bound to loopback answers only requests whose Host header names this machine, so a
  web page elsewhere cannot reach it through DNS rebinding; a service bound to one address accepts
  that address (and the names given with ``--allow-host``).
- Token: on any address but loopback the pages show patients' radiographs, so every request (pages,
  images, API) must carry the token: ``Authorization: Bearer T``, the ``pneumodet_token`` cookie, or
  ``?token=T`` once (which sets the cookie). It is compared in constant time.
- Uploads: refused by Content-Length before a byte is read, then read as a stream with a hard cap and
  parsed in memory: nothing an upload holds is written to disk. A form may have at most ``MAX_PARTS`` parts,
  ``MAX_PART_HEADERS`` headers of ``MAX_HEADER_BYTES`` each (a 32 MB body of 3.7 M empty parts once cost 1.2 GB).
- Bodies: every other request may send at most ``MAX_BODY_BYTES`` (the verdict JSON is a few hundred bytes).
- Admission: at most ``slots`` uploads are decoded and predicted at once and ``queue`` more wait; beyond that a
  request is answered 503 with Retry-After, before its body is read.
- Pages: a Content-Security-Policy that runs only the app's own script files (no inline script, no script
  from elsewhere), so a value that slipped into a page as markup still could not run.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import threading
from contextlib import contextmanager

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from pneumodet.errors import UserError

TOKEN_ENV = "PNEUMODET_TOKEN"
TOKEN_COOKIE = "pneumodet_token"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}
#: room for the multipart boundaries and part headers around the file itself
FORM_OVERHEAD = 64 * 1024
#: a form's parts (the file and a few fields), headers per part, and bytes per header
MAX_PARTS = 8
MAX_PART_HEADERS = 8
MAX_HEADER_BYTES = 4096
#: the largest body of any request but an upload
MAX_BODY_BYTES = 64 * 1024
#: what the pages may load: the app's own scripts, styles and images (and the try-it page's data: PNGs)
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
#: FastAPI's own API page loads Swagger UI from a CDN with an inline script; it shows no data
DOCS_PATH = "/api/docs"


def is_loopback(host: str) -> bool:
    """Return whether ``host`` (an address or name to bind) is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """Return the token the service must require on ``host`` (None on loopback without one); else raise."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise UserError(f"--host {host} shares patients' radiographs beyond this machine: give --token T "
                        f"(or set {TOKEN_ENV}), at least {MIN_TOKEN_CHARS} characters, e.g. from "
                        "python -c 'import secrets; print(secrets.token_urlsafe())'")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"the access token must have at least {MIN_TOKEN_CHARS} characters")
    return token


def allowed_hosts(host: str, extra: list[str] = ()) -> set[str] | None:
    """Return the Host header names to accept when bound to ``host``; None accepts any (wildcard bind)."""
    if host in WILDCARDS:
        return None
    names = {host.strip("[]"), *extra}
    if is_loopback(host):
        names |= LOOPBACK_NAMES
    return {n.lower() for n in names}


def host_name(header: str) -> str:
    """Return the host part of a Host header: 'a:8000' -> 'a', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _presented_token(request: Request) -> tuple[str | None, bool]:
    """Return (the token the request carries, whether it came in the query string)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if TOKEN_COOKIE in request.cookies:
        return request.cookies[TOKEN_COOKIE], False
    if "token" in request.query_params:
        return request.query_params["token"], True
    return None, False


def install_guard(app, hosts: set[str] | None, token: str | None, upload_path: str | None = None) -> None:
    """Check every request's Host header against ``hosts`` and its token against ``token``, cap every body but
    ``upload_path``'s at MAX_BODY_BYTES, and set the security headers on every response."""
    # added first, so it runs inside the guard: its 413 is raised in the endpoint's own reading of the body
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, exempt=(upload_path,))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if hosts is not None and host_name(request.headers.get("host", "")) not in hosts:
            return _secured(JSONResponse({"detail": "unexpected Host header: use the address the service was "
                                                    "started on"}, 421), request)
        from_query = False
        if token is not None:
            presented, from_query = _presented_token(request)
            if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
                return _secured(JSONResponse({"detail": "access token required (open the address printed by "
                                                        "pneumodet serve)"}, 401,
                                             headers={"WWW-Authenticate": "Bearer"}), request)
        response = await call_next(request)
        if from_query:  # the browser keeps it, so the pages' own requests carry it
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return _secured(response, request)


def _secured(response, request: Request):
    for name, value in SECURITY_HEADERS.items():
        if name != "Content-Security-Policy" or request.url.path != DOCS_PATH:
            response.headers[name] = value
    return response


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` is refused (413), by its Content-Length before a
    byte is read, else as soon as the bytes received pass the cap. ``exempt`` paths read their own, larger cap."""

    def __init__(self, app, max_bytes: int, exempt: tuple[str | None, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, set(exempt)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            status, text = (400, "malformed Content-Length") if not declared.isdigit() else (413, self._too_large)
            return await JSONResponse({"detail": text}, status)(scope, receive, send)
        received = 0

        async def capped():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._too_large)
            return message

        await self.app(scope, capped, send)

    @property
    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes // 1024} KB"


class Busy(Exception):
    """No decode slot freed within the admission's wait (the API answers 503 with Retry-After, as it does when the
    queue is full)."""

    retry_after_s = 5


class Admission:
    """At most ``slots`` decodes at once, at most ``queue`` requests waiting for one; beyond that, Busy.

    :meth:`admit` counts a request from before its body is read (so a full service reads no more uploads);
    :meth:`run` holds a slot while a worker thread decodes and predicts, waiting at most ``wait_s``."""

    def __init__(self, slots: int, queue: int, wait_s: float = 60.0):
        self.slots, self.queue, self.wait_s = slots, queue, wait_s
        self.semaphore = threading.Semaphore(slots)
        self.lock = threading.Lock()
        self.admitted = 0
        self.peak_decoding = 0  # the most decodes ever running at once (tests check it stays <= slots)
        self.decoding = 0

    @contextmanager
    def admit(self):
        with self.lock:
            if self.admitted >= self.slots + self.queue:
                raise HTTPException(503, f"busy: {self.slots} uploads being decoded and {self.queue} waiting; "
                                    f"try again in {Busy.retry_after_s} s",
                                    headers={"Retry-After": str(Busy.retry_after_s)})
            self.admitted += 1
        try:
            yield
        finally:
            with self.lock:
                self.admitted -= 1

    def run(self, fn, *args):
        """Return ``fn(*args)`` run within a decode slot; Busy if none frees within ``wait_s``."""
        if not self.semaphore.acquire(timeout=self.wait_s):
            raise Busy(f"busy: no decode slot freed within {self.wait_s:g} s; try again in {Busy.retry_after_s} s")
        try:
            with self.lock:
                self.decoding += 1
                self.peak_decoding = max(self.peak_decoding, self.decoding)
            return fn(*args)
        finally:
            with self.lock:
                self.decoding -= 1
            self.semaphore.release()


async def read_upload(request: Request, max_bytes: int, limit_text: str) -> tuple[str | None, bytes]:
    """Return (file name, bytes) of the upload: the ``file`` field of a form, or a raw DICOM body.

    Refuses (413) by Content-Length before reading, and stops reading past the cap otherwise.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    multipart = content_type == b"multipart/form-data"
    cap = max_bytes + (FORM_OVERHEAD if multipart else 0)
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise HTTPException(400, "malformed Content-Length") from None
    if declared > cap:
        raise HTTPException(413, f"upload larger than the {limit_text} limit")
    if not multipart:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise HTTPException(413, f"upload larger than the {limit_text} limit")
        if not body and content_type not in (b"application/dicom", b"application/octet-stream"):
            raise HTTPException(422, "send the DICOM as the 'file' field of a form, or as an application/dicom body")
        return request.query_params.get("filename"), bytes(body)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart form without a boundary")
    return await _read_form(request, boundary, cap, max_bytes, limit_text)


async def _read_form(request: Request, boundary: bytes, cap: int, max_bytes: int, limit_text: str):
    parts: list[dict] = []
    header = {"field": b"", "value": b""}

    def on_part_begin():
        if len(parts) >= MAX_PARTS:
            raise HTTPException(413, f"a form of more than {MAX_PARTS} parts; send the DICOM as its 'file' field")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data, start, end):
        header["field"] += data[start:end]
        _check_header(header)

    def on_header_value(data, start, end):
        header["value"] += data[start:end]
        _check_header(header)

    def on_header_end():
        if len(parts[-1]["headers"]) >= MAX_PART_HEADERS:
            raise HTTPException(413, f"a form part with more than {MAX_PART_HEADERS} headers")
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_headers_finished():
        parts[-1]["name"] = _field_name(parts[-1])

    def on_part_data(data, start, end):
        if parts[-1].get("name") == "file":
            parts[-1]["data"] += data[start:end]
            if len(parts[-1]["data"]) > max_bytes:
                raise HTTPException(413, f"upload larger than the {limit_text} limit")

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > cap:
                raise HTTPException(413, f"upload larger than the {limit_text} limit")
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        raise
    except Exception as exc:  # the parser's own errors: a malformed form is the client's mistake
        raise HTTPException(400, f"malformed multipart form ({type(exc).__name__})") from None
    files = [p for p in parts if p.get("name") == "file"]
    if not files:
        raise HTTPException(422, "no 'file' field in the form")
    disposition = parse_options_header(files[0]["headers"].get(b"content-disposition", b""))[1]
    name = disposition.get(b"filename")
    return (name.decode("utf-8", "replace") if name else None), bytes(files[0]["data"])


def _check_header(header: dict) -> None:
    if len(header["field"]) + len(header["value"]) > MAX_HEADER_BYTES:
        raise HTTPException(413, f"a form part header longer than {MAX_HEADER_BYTES} bytes")


def _field_name(part: dict) -> str | None:
    options = parse_options_header(part["headers"].get(b"content-disposition", b""))[1]
    name = options.get(b"name")
    return name.decode("utf-8", "replace") if name else None
