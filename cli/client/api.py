"""The appliance's REST API as a client uses it (docs/api.md): sign-in, meetings, ``/metrics``.

Plain stdlib HTTP, never through a proxy (the media of a meeting cannot use one either); each call
runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import REQUEST_TIMEOUT, ClientError


class ApplianceApi:
    """The REST calls of one client, signed in (``sign_in``) or not; ``metrics_token`` opens
    ``/metrics`` from a machine the appliance does not list in its metrics_addresses."""

    def __init__(self, url: str, metrics_token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ClientError(f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.token = ""  # the access token, once signed in
        self.metrics_token = metrics_token
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   token: str | None = None) -> tuple[int, Any]:
        """(HTTP status, the JSON body, or the text of one that is not JSON), with the access token
        of the sign-in unless ``token`` is given."""
        return await asyncio.to_thread(self._call, method, path, body, token or self.token)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=REQUEST_TIMEOUT) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the appliance at {self.url}: {reason}") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    @staticmethod
    def _message(payload: Any) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return str(payload["error"].get("message", ""))
        return ""

    async def sign_in(self, email: str, password: str) -> None:
        status, payload = await self.call("POST", "/api/v1/auth/login", {"email": email, "password": password})
        if status in (400, 401, 422):
            raise ClientError(f"cannot sign in as {email}: {self._message(payload) or f'HTTP {status}'}")
        if status != 200 or not isinstance(payload, dict) or "access_token" not in payload:
            raise ClientError(f"{self.url} does not look like a confmeet appliance: "
                              f"POST /api/v1/auth/login answered HTTP {status}")
        self.token = payload["access_token"]

    async def meeting(self, code: str) -> dict[str, Any]:
        """The meeting with this join code, ended or not."""
        quoted = urllib.parse.quote(code.strip().lower(), safe="")
        status, payload = await self.call("GET", f"/api/v1/meetings/by-code/{quoted}")
        if status == 404:
            raise ClientError(f"meeting {code!r} not found on {self.url}")
        if status != 200 or not isinstance(payload, dict):
            raise ClientError(f"cannot look up meeting {code!r}: {self._message(payload) or f'HTTP {status}'}")
        return payload

    async def create_meeting(self, title: str) -> dict[str, Any]:
        status, payload = await self.call("POST", "/api/v1/meetings", {"title": title})
        if status != 201 or not isinstance(payload, dict):
            raise ClientError(f"cannot create a meeting: {self._message(payload) or f'HTTP {status}'}")
        return payload

    async def end_meeting(self, meeting_id: str) -> None:
        await self.call("POST", f"/api/v1/meetings/{urllib.parse.quote(meeting_id, safe='')}/end")

    async def metrics(self) -> str | None:
        """The appliance's Prometheus exposition now; None when it refuses it (``/metrics`` is for
        the monitoring server: from loopback, or with its bearer token)."""
        status, text = await self.call("GET", "/metrics", token=self.metrics_token)
        return text if status == 200 and isinstance(text, str) else None
