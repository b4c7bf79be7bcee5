"""A local HTTP server that serves model repositories the way the Hugging Face Hub does, as far as
huggingface_hub's snapshot_download needs: repo info, the file tree, and HEAD/GET (with ranges) on
`/{repo}/resolve/{revision}/{path}`. Point HF_ENDPOINT at it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.shas: dict[str, str] = {}  # each repo's commit (a new one: the repo moved on)
        self.downloads: Counter[str] = Counter()  # full GETs of each file
        self.cuts: Counter[str] = Counter()  # GETs of a file still to stop half-way, as a dropped connection does
        self.hold: threading.Event | None = None  # set it: downloads wait until it is set (a slow network)
        self.downloading = threading.Event()  # a download is waiting on `hold`
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, directory: Path, sha: str = SHA) -> None:
        self.repos[repo_id] = directory
        self.shas[repo_id] = sha

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo_id: str) -> list[Path]:
        root = self.repos[repo_id]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _json(self, h: BaseHTTPRequestHandler, data: object, status: int = 200) -> None:
        raw = json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo_id = "/".join(parts[2:4])
            if repo_id not in self.repos:
                return self._json(h, {"error": "Repository not found"}, 404)
            root = self.repos[repo_id]
            if parts[4:5] in ([], ["revision"]):
                siblings = [{"rfilename": str(p.relative_to(root))} for p in self._files(repo_id)]
                return self._json(h, {"id": repo_id, "sha": self.shas[repo_id], "siblings": siblings})
            if parts[4:5] == ["tree"]:
                return self._json(
                    h,
                    [
                        {
                            "type": "file",
                            "path": str(p.relative_to(root)),
                            "size": p.stat().st_size,
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                        }
                        for p in self._files(repo_id)
                    ],
                )
        if "resolve" in parts:
            i = parts.index("resolve")
            repo_id, filename = "/".join(parts[:i]), "/".join(parts[i + 2 :])
            file = self.repos.get(repo_id, Path("/nonexistent")) / filename
            if not file.is_file():
                return self._json(h, {"error": "Entry not found"}, 404)
            data = file.read_bytes()
            start = 0
            if (rng := h.headers.get("Range", "")).startswith("bytes="):
                start = int(rng[6:].split("-")[0] or 0)
            h.send_response(206 if start else 200)
            h.send_header("X-Repo-Commit", self.shas.get(repo_id, SHA))
            h.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            h.send_header("Content-Length", str(len(data) - start))
            h.end_headers()
            if not body:
                return None
            if self.hold is not None:
                self.downloading.set()
                self.hold.wait(30)
            if self.cuts[filename] > 0:
                self.cuts[filename] -= 1
                h.wfile.write(data[start : start + (len(data) - start) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)
                return None
            self.downloads[filename] += 1
            h.wfile.write(data[start:])
            return None
        return self._json(h, {"error": "not found"}, 404)
