"""A Twilio-compatible HTTP stub on 127.0.0.1: the real ``twilio`` client talks to it.

It records every message in an outbox, checks Basic auth against the account it was given, answers
like Twilio (201 + message JSON, or Twilio's error JSON), and can be told to fail, for tests.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class OutMessage:
    sid: str
    to: str
    from_: str
    body: str
    at: float
    status_callback: str | None = None


@dataclass
class Failure:
    status: int
    code: int
    message: str
    times: int  # how many more requests fail this way (-1: always)
    to: str | None = None  # only for this number


@dataclass
class TwilioStub:
    account_sid: str = "AC" + "0" * 32
    auth_token: str = "local-token"
    outbox: list[OutMessage] = field(default_factory=list)
    attempts: int = 0
    delay_s: float = 0.0
    _failures: list[Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail(self, status: int, code: int, message: str = "injected failure", times: int = 1,
             to: str | None = None) -> None:
        with self._lock:
            self._failures.append(Failure(status, code, message, times, to))

    def clear(self) -> None:
        with self._lock:
            self.outbox.clear()
            self._failures.clear()
            self.attempts = 0

    def _take_failure(self, to: str) -> Failure | None:
        with self._lock:
            for f in self._failures:
                if f.to not in (None, to) or f.times == 0:
                    continue
                if f.times > 0:
                    f.times -= 1
                return f
        return None

    def start(self) -> TwilioStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                with stub._lock:
                    stub.attempts += 1
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{stub.account_sid}:{stub.auth_token}".encode()).decode()
                if auth != expected:
                    return self._json(401, {"code": 20003, "message": "Authenticate", "status": 401})
                if not self.path.endswith(f"/Accounts/{stub.account_sid}/Messages.json"):
                    return self._json(404, {"code": 20404, "message": "not found", "status": 404})
                to = form.get("To", "")
                failure = stub._take_failure(to)
                if failure is not None:
                    return self._json(failure.status, {"code": failure.code, "message": failure.message,
                                                       "status": failure.status})
                sid = "SM" + uuid.uuid4().hex
                msg = OutMessage(sid, to, form.get("From", ""), form.get("Body", ""), time.time(),
                                 form.get("StatusCallback"))
                with stub._lock:
                    stub.outbox.append(msg)
                return self._json(201, {"sid": sid, "status": "queued", "to": msg.to, "from": msg.from_,
                                        "body": msg.body, "account_sid": stub.account_sid,
                                        "num_segments": "1", "direction": "outbound-api"})

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="twilio-stub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
