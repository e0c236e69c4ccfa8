"""A local web page to search an indexed gallery (`eval.search.gallery_index`) by description.

python -m eval serve --index INDEX [--port 8080] [--host 127.0.0.1] [--approximate]

Routes: `/` the page (eval/search/static/gallery_search.html: a text box, the top-k images with their scores, a
click shows an image large; no external assets, so it works offline), `/search?q=TEXT&top=K` the results as
JSON, `/image/RELATIVE_PATH` an image. Only images the index lists are served, and only when their real path
lies inside the indexed folder: anything else, `..` and symlinks leading out included, is a 404. The server
binds to 127.0.0.1 unless told otherwise: the page has no authentication.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from data.cli_errors import error_boundary, port_number
from engine.runtime.checkpoint import CheckpointError
from eval.search.gallery_index import GalleryIndexError
from eval.search.gallery_search import GallerySearcher, add_search_arguments, searcher_from_args

PAGE = Path(__file__).with_name("static") / "gallery_search.html"
MAX_TOP = 100
MAX_QUERY_CHARS = 2000


class GalleryFiles:
    """Maps a URL path below /image/ to a file, or to None for anything that is not an indexed image."""

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root = root.resolve()
        self.paths = frozenset(paths)

    def resolve(self, url_path: str) -> Path | None:
        relative = unquote(url_path)
        if relative not in self.paths:  # the index holds normalised relative paths: no "..", no leading "/"
            return None
        file = (self.root / relative).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():  # a symlink that leads out, or a deleted file
            return None
        return file


def make_handler(searcher: GallerySearcher, page: bytes) -> type[BaseHTTPRequestHandler]:
    files = GalleryFiles(searcher.index.images, searcher.index.paths)
    lock = threading.Lock()  # one query at a time through the model: torch already uses every core for one

    class Handler(BaseHTTPRequestHandler):
        server_version = "PersonSearch"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif url.path == "/search":
                self._search(parse_qs(url.query))
            elif url.path.startswith("/image/") and (file := files.resolve(url.path[len("/image/") :])):
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                self._send(HTTPStatus.OK, file.read_bytes(), kind, cache=True)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

        def _search(self, query: dict[str, list[str]]) -> None:
            text = query.get("q", [""])[0].strip()
            try:
                top = int(query.get("top", ["10"])[0])
            except ValueError:
                top = 0
            if not text or len(text) > MAX_QUERY_CHARS or not 1 <= top <= MAX_TOP:
                error = f"give q (1 to {MAX_QUERY_CHARS} characters) and top (1 to {MAX_TOP})"
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": error})
                return
            with lock:
                result = searcher.search(text, top)
            hits = [{"rank": h.rank, "path": h.path, "score": h.score} for h in result.hits]
            answer = {"query": result.query, "truncated": result.truncated, "method": result.method, "results": hits}
            self._send_json(HTTPStatus.OK, answer)

        def _send_json(self, status: HTTPStatus, value: dict) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, kind: str, *, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            pass  # quiet: one line per image request would drown the address printed at start

    return Handler


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval serve", description="A local page to search a gallery.")
    parser.add_argument("--index", required=True, help="an index written by python -m eval index")
    parser.add_argument("--port", type=port_number, default=8080, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; the page has no authentication")
    add_search_arguments(parser)
    return parser.parse_args(argv)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        searcher = searcher_from_args(args, in_memory=True)
    except (GalleryIndexError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(searcher, PAGE.read_bytes()))
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {len(searcher.index)} images from {searcher.index.images} at http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
