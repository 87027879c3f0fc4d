"""A small client for the daemon's HTTP API (the CLI's transport)."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiCallError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code, self.message, self.details = status, code, message, details


class ApiUnreachable(Exception):
    pass


class ApiClient:
    def __init__(self, base_url: str, token: str = "", timeout: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        return self.call_status(method, path, query=query, body=body)[1]

    def call_status(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                    body: Any = None) -> tuple[int, Any]:
        """The HTTP status with the body: a submit's 201 (created) and 200 (already there) differ."""
        url = self.base + path
        if query:
            pairs = [(k, v) for k, vs in query.items() if vs is not None
                     for v in (vs if isinstance(vs, list) else [vs])]
            url += "?" + urllib.parse.urlencode(pairs)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None or method != "GET":
            req.add_header("Content-Type", "application/json")  # the daemon's CSRF guard asks for it
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise ApiCallError(e.code, err.get("code", "error"), err.get("message", ""), err.get("details")) from None
            except (ValueError, KeyError, TypeError):
                raise ApiCallError(e.code, "http_error", raw.decode(errors="replace")[:200]) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ApiUnreachable(f"cannot reach the chunkd API at {self.base} ({reason}); is `chunkd run` "
                                 "running there? Set CHUNKD_API_URL") from None
