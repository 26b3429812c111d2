"""A Hugging Face Hub stand-in on 127.0.0.1: real huggingface_hub clients talk to it through
`HF_ENDPOINT`, so downloads and "no network" promises are tested with the library's own code.

It serves repos (repo id -> local folder) through the routes huggingface_hub uses:
`GET /api/models/<repo>[/revision/<rev>]` (repo info), `GET /api/models/<repo>/tree/<rev>`
(the file listing with sizes) and `HEAD`/`GET /<repo>/resolve/<rev>/<path>` (file metadata and
content). `requests` records every request line, so a test can assert that a check made none,
or that a download fetched exactly the files it should.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def downloads(self) -> list[str]:
        """`<repo>/<path>` of every file whose content was fetched (GET on resolve)."""
        out = []
        for line in self.requests:
            method, path = line.split(" ", 1)
            if method == "GET" and "/resolve/" in path:
                repo, rest = path.lstrip("/").split("/resolve/", 1)
                out.append(f"{repo}/{rest.split('/', 1)[1]}")
        return out

    def _split(self, path: str) -> tuple[str, str] | None:
        """(repo, rest) for the longest served repo id that `path` starts with."""
        for repo in sorted(self.repos, key=len, reverse=True):
            if path == repo or path.startswith(repo + "/"):
                return repo, path[len(repo) :].lstrip("/")
        return None

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                if path.startswith("/api/models/"):
                    found = hub._split(path[len("/api/models/") :])
                    if found is None:
                        return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                    repo, rest = found
                    files = hub.files(repo)
                    if rest.startswith("tree/"):
                        return self._json(
                            [
                                {"type": "file", "path": name, "size": p.stat().st_size,
                                 "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                                for name, p in files.items()
                            ]
                        )  # fmt: skip
                    siblings = [{"rfilename": name} for name in files]
                    return self._json({"id": repo, "sha": hub.commit(repo), "siblings": siblings})
                found = hub._split(path.lstrip("/"))
                if found is None or not found[1].startswith("resolve/"):
                    return self._send(404, headers={"X-Error-Code": "RepoNotFound"})
                repo, rest = found
                name = rest.split("/", 2)[2] if rest.count("/") >= 2 else ""
                file = hub.files(repo).get(name)
                if file is None:
                    return self._send(404, headers={"X-Error-Code": "EntryNotFound"})
                body = file.read_bytes()
                headers = {
                    "X-Repo-Commit": hub.commit(repo),
                    "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                    "Content-Type": "application/octet-stream",
                }
                self._send(200, body, headers)

        return Handler
