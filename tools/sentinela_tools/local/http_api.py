"""A local stand-in for API Gateway's HTTP API: real HTTP on 127.0.0.1 -> payload format 2.0 events ->
the real handler -> its response back as HTTP.

Generic: give it routes ``{"POST /uploads": fn}`` where ``fn(event) -> response`` calls a handler (the
local stack wraps each handler with a Lambda-like context). It can be told to fail (``fail(503, times=N)``)
or be stopped and started again on the same port, to test clients over a bad link.

What it does like API Gateway: lower-cased header names, ``rawPath``/``rawQueryString``, cookies split
out, bodies base64-encoded unless the content type is text (text/*, JSON, XML, JavaScript), a handler
that returns a bare dict or string answered as 200 JSON, 404 ``{"message": "Not Found"}`` for unknown
routes and 500 ``{"message": "Internal Server Error"}`` when the handler raises.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)
Route = Callable[[dict[str, Any]], Any]
_TEXT = ("text/", "application/json", "application/xml", "application/javascript")


@dataclass
class _Failure:
    status: int
    times: int  # -1: until cleared
    body: str


def _is_text(content_type: str) -> bool:
    ct = content_type.lower()
    # Anything else (form posts included) arrives base64-encoded; handlers must read ``isBase64Encoded``.
    return any(ct.startswith(t) for t in _TEXT)


class HttpApi:
    def __init__(self, routes: dict[str, Route], *, port: int = 0, stage: str = "$default") -> None:
        self.routes = dict(routes)
        self.stage = stage
        self.port = port
        self.requests = 0
        self.handled = 0
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()  # one invocation at a time, like one Lambda container
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- fault injection ---------------------------------------------------------------------------
    def fail(self, status: int = 503, times: int = 1, body: str = '{"message": "Service Unavailable"}') -> None:
        with self._lock:
            self._failures.append(_Failure(status, times, body))

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            for f in self._failures:
                if f.times == 0:
                    continue
                if f.times > 0:
                    f.times -= 1
                return f
        return None

    # --- events ------------------------------------------------------------------------------------
    def event(self, method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str = "127.0.0.1",
              route_key: str | None = None) -> dict[str, Any]:
        parts = urlsplit(target)
        now = dt.datetime.now(dt.UTC)
        lower = {k.lower(): v for k, v in headers.items()}
        text = _is_text(lower.get("content-type", "text/plain"))
        ev: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key or f"{method} {parts.path}",
            "rawPath": parts.path,
            "rawQueryString": parts.query,
            "headers": {k: v for k, v in lower.items() if k != "cookie"},
            "requestContext": {
                "accountId": "123456789012", "apiId": "local", "domainName": f"127.0.0.1:{self.port}",
                "domainPrefix": "127", "http": {"method": method, "path": parts.path, "protocol": "HTTP/1.1",
                                                "sourceIp": source_ip, "userAgent": lower.get("user-agent", "")},
                "requestId": uuid.uuid4().hex, "routeKey": route_key or f"{method} {parts.path}",
                "stage": self.stage, "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "isBase64Encoded": bool(body) and not text,
        }
        if parts.query:
            ev["queryStringParameters"] = dict(parse_qsl(parts.query, keep_blank_values=True))
        if "cookie" in lower:
            ev["cookies"] = [c.strip() for c in lower["cookie"].split(";") if c.strip()]
        if body:
            ev["body"] = body.decode("utf-8", "replace") if text else base64.b64encode(body).decode()
        return ev

    def _route(self, method: str, path: str) -> tuple[str, Route] | None:
        for key in (f"{method} {path}", f"ANY {path}"):
            if key in self.routes:
                return key, self.routes[key]
        return None

    @staticmethod
    def _as_http(result: Any) -> tuple[int, dict[str, str], bytes]:
        """Payload format 2.0 responses: a dict with statusCode, or anything else as a 200 JSON body."""
        if isinstance(result, dict) and "statusCode" in result:
            raw = result.get("body") or ""
            body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
            headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
            headers.setdefault("Content-Type", "application/json")
            return int(result["statusCode"]), headers, body
        data = result if isinstance(result, str) else json.dumps(result)
        return 200, {"Content-Type": "application/json"}, data.encode()

    # --- server ------------------------------------------------------------------------------------
    def start(self) -> HttpApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with api._lock:
                    api.requests += 1
                failure = api._take_failure()
                if failure is not None:
                    return self._send(failure.status, {"Content-Type": "application/json"}, failure.body.encode())
                path = urlsplit(self.path).path
                found = api._route(self.command, path)
                if found is None:
                    return self._send(404, {"Content-Type": "application/json"}, b'{"message":"Not Found"}')
                key, fn = found
                event = api.event(self.command, self.path, dict(self.headers.items()), body,
                                  self.client_address[0], route_key=key)
                try:
                    with api._call_lock:
                        status, headers, out = api._as_http(fn(event))
                except Exception:
                    log.exception("handler for %s failed", key)
                    return self._send(500, {"Content-Type": "application/json"},
                                      b'{"message":"Internal Server Error"}')
                with api._lock:
                    api.handled += 1
                self._send(status, headers, out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        # A restarted API keeps its port, so a client configured with its URL finds it again.
        for attempt in range(50):
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        assert self._server is not None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name=f"http-api-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
