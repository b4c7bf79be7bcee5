"""Who may drive the server: the API key, browser origins, and Host names, checked before any resource runs.

- An API key (`api_key` / `api_key_file`): every route but /health (and /metrics while `metrics_public`)
  needs `Authorization: Bearer KEY`, which the OpenAI, Cohere and Jina clients send.
- Browsers: any web page the user opens can send requests to 127.0.0.1 (a `text/plain` POST needs no
  preflight), and browsers mark them with an `Origin` header. A request from an origin not in
  `allowed_origins` is refused (403), as Ollama refuses them; allowed origins get CORS headers. The
  server's own pages (/status, /docs) are its own origin, which passes under a trusted Host name.
- DNS rebinding: a page can make a name of its own resolve to 127.0.0.1, but its requests still carry that
  name in `Host`. On a loopback bind, only loopback names (and `allowed_hosts`, for a proxy in front) pass.
"""

from __future__ import annotations

import hmac
import ipaddress

import falcon

from mlx_serve.core.errors import Forbidden, Unauthorized
from mlx_serve.http.pages import PUBLIC_PAGES
from mlx_serve.settings import Settings

# The pages hold no data (what they show comes from the routes they call, which keep the key).
PUBLIC_ROUTES = frozenset({"/health", "/ready"}) | PUBLIC_PAGES
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.key = settings.resolved_api_key()
        self.metrics_public = settings.metrics_public
        self.origins = frozenset(settings.allowed_origins)
        self.hosts = frozenset(h.lower() for h in settings.allowed_hosts)
        # A server bound to 0.0.0.0 is reached under any of the machine's names; a loopback one only
        # under loopback names, unless a proxy in front is named.
        self.check_host = settings.loopback or bool(self.hosts)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.check_host:
            name = host_name(req.get_header("Host") or "")
            if not (is_loopback_name(name) or name in self.hosts):
                raise Forbidden(
                    f"The Host {name!r} is not this server's: add it to `allowed_hosts` if a proxy forwards it.",
                    code="forbidden_host",
                )
        origin = req.get_header("Origin")
        if (
            origin is not None
            and origin not in self.origins
            and "*" not in self.origins
            and not self._own_page(origin, req.get_header("Host") or "")
        ):
            raise Forbidden(
                f"Requests from the web origin {origin!r} are refused: add it to `allowed_origins` to allow it.",
                code="forbidden_origin",
            )
        if self.key is None or req.method == "OPTIONS" or self._public(req.path):
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        # WSGI hands header values over as latin-1 text: their bytes again, compared with the key's UTF-8
        # bytes, so that a key with non-ASCII characters works from a UTF-8 client.
        sent = token.strip().encode("latin-1", "replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent, self.key.encode("utf-8")):
            error = Unauthorized("A valid API key is required: send `Authorization: Bearer <key>`.")
            error.headers = {"WWW-Authenticate": 'Bearer realm="mlx-serve"'}
            raise error

    def _own_page(self, origin: str, host: str) -> bool:
        """A request from this server's own pages (/status): the origin is this very host, under a name
        the Host check trusts (a loopback name, or one of allowed_hosts). Under any other name, as a
        0.0.0.0 bind is reached, a page of a rebound name would pass too: add it to allowed_origins."""
        name = host_name(host)
        trusted = is_loopback_name(name) or name in self.hosts
        return trusted and origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}")

    def _public(self, path: str) -> bool:
        return path in PUBLIC_ROUTES or (path == "/metrics" and self.metrics_public)
