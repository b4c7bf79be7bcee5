"""A small HTTP client for talking to a running server, with one error handling for every command."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from mlx_serve.process.lifecycle import DIRECT


class ClientError(Exception):
    """The server refused (its own error message), or could not be reached."""


class ServerClient:
    def __init__(self, url: str, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:  # the key the settings give, as any client sends it
            self.headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self._call("POST", path, body, timeout)

    def delete(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self._call("DELETE", path, body, timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=self.headers)
        try:
            with DIRECT.open(request, timeout=timeout or self.timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise ClientError(_message(exc)) from None
        except (OSError, ValueError) as exc:
            raise ClientError(f"could not reach the server at {self.url}: {exc}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    """The server's own sentence from its error body (Ollama's `{"error": text}` on /api/, OpenAI's
    `{"error": {"message"}}` elsewhere), else the HTTP status."""
    try:
        error = json.load(exc)["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code} {exc.reason}"
