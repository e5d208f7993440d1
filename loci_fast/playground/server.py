"""The playground's HTTP server: the page (package data) and a small JSON API over one loaded decoder.

    GET  /                 the page (static/index.html; its script and style under /static/)
    GET  /api/slot         {"slot": layout of the controls, "latent": the starting latent}
    POST /api/decode       {"gestalt": [...], "position": [...]}
                           -> {"images": {composite, rgb, mask, position: PNG data URLs}, "decode_ms": ...}

Bad requests get 400 with {"error": what is wrong and how to fix it}. The stdlib server is enough:
one person, one page, a request per click; the model stays loaded and decodes under a lock.
"""
from __future__ import annotations

import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from .images import png_data_url
from .latent import SlotLatent
from .slots import SlotDecoder

STATIC = {"index.html": "text/html; charset=utf-8", "playground.js": "text/javascript; charset=utf-8",
          "playground.css": "text/css; charset=utf-8"}
MAX_BODY = 1 << 20  # a Loci-s latent is ~800 numbers; 1 MiB is far more than any real request


class BadRequest(ValueError):
    """A client error, answered with 400 and its message."""


def static_file(name: str) -> bytes:
    """The bytes of one of the page's files, from the installed package."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def parse_latent(body: bytes) -> SlotLatent:
    """The request body as a SlotLatent (lengths are checked by the decoder)."""
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not JSON ({err}); send {{\"gestalt\": [...], \"position\": [...]}}") from None
    if not isinstance(data, dict) or not {"gestalt", "position"} <= set(data):
        raise BadRequest('the body must be a JSON object with "gestalt" and "position" lists')
    return SlotLatent(data["gestalt"], data["position"])


class PlaygroundServer(ThreadingHTTPServer):
    """Serves the page for ``slot`` starting at ``latent``; ``port=0`` picks a free port (see :attr:`url`)."""

    daemon_threads = True

    def __init__(self, slot: SlotDecoder, latent: SlotLatent, host: str = "127.0.0.1", port: int = 0,
                 quiet: bool = True) -> None:
        self.slot, self.latent, self.quiet = slot, slot.check(latent, "--latent"), quiet
        super().__init__((host, port), PlaygroundHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def decode(self, latent: SlotLatent) -> dict[str, Any]:
        """The API's answer for one latent: the four views as PNG data URLs and the decode time."""
        start = time.perf_counter()
        try:
            views = self.slot.render(latent)
        except ValueError as err:
            raise BadRequest(str(err)) from None
        decode_ms = (time.perf_counter() - start) * 1e3
        return {"images": {name: png_data_url(image) for name, image in views.items()},
                "decode_ms": round(decode_ms, 3)}


class PlaygroundHandler(BaseHTTPRequestHandler):
    server: PlaygroundServer
    server_version = "loci-fast-playground"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, static_file("index.html"), STATIC["index.html"])
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC:
            name = path[len("/static/"):]
            self._send(HTTPStatus.OK, static_file(name), STATIC[name])
        elif path == "/api/slot":
            self._json(HTTPStatus.OK, {"slot": self.server.slot.describe(), "latent": self.server.latent.to_json()})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {path}; open / for the playground"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/api/decode":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}; POST /api/decode"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"send a JSON body of 1 to {MAX_BODY} bytes with a "
                                                         "Content-Length header"})
            return
        try:
            answer = self.server.decode(parse_latent(self.rfile.read(length)))
        except BadRequest as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        self._json(HTTPStatus.OK, answer)

    def _json(self, status: HTTPStatus, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if not self.server.quiet:
            super().log_message(format, *args)
