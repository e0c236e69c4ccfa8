"""An S3-compatible server on 127.0.0.1 (moto's, in this process) for the tests and the remote-shard benchmark.

moto is a development dependency, imported only when a server starts. `S3Server` counts the requests it serves and
can be stopped and started again on its port; `client_environment` points boto3 and mosaicml-streaming at it."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

from engine.runtime.collectives import free_port

MAX_REQUESTS = 20_000  # a runaway client gets 503s past this many requests
LIFETIME_S = 900.0  # and the server answers 503 after this long


class S3Server:
    """moto's S3 on 127.0.0.1:port. `gets` counts GET requests per path (HEAD and PUT are not GETs); `stop` closes
    the listening socket, so clients are refused as by a server that went away, and `start` serves again on the same
    port with the same objects (moto keeps them in this process)."""

    def __init__(self, *, max_requests: int = MAX_REQUESTS, lifetime_s: float = LIFETIME_S) -> None:
        self.port = free_port()
        self.gets: Counter[str] = Counter()
        self.puts: list[str] = []  # paths in the order they were written
        self.requests = 0
        self.max_requests = max_requests
        self.stop_after: int | None = None  # go away after this many more GETs (`outage`)
        self.down_for: float | None = None
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._deadline = time.monotonic() + lifetime_s

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _counting(self, app):
        def counted(environ, start_response):
            with self._lock:
                self.requests += 1
                over = self.requests > self.max_requests or time.monotonic() > self._deadline
                if environ["REQUEST_METHOD"] == "GET":
                    self.gets[environ.get("PATH_INFO", "")] += 1
                    if self.stop_after is not None:
                        self.stop_after -= 1
                        if self.stop_after == 0:  # this GET is answered; the server goes away right after
                            threading.Thread(target=self._go_away, args=(self.down_for,)).start()
                if environ["REQUEST_METHOD"] == "PUT":
                    self.puts.append(environ.get("PATH_INFO", ""))
            if over:
                start_response("503 Service Unavailable", [("Content-Length", "0")])
                return [b""]
            return app(environ, start_response)

        return counted

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        app = self._counting(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            server, self._server, self.stop_after = self._server, None, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def outage(self, *, after_gets: int, down_for: float | None = None) -> None:
        """After `after_gets` more GETs the server stops; it serves again `down_for` seconds later (None: never)."""
        self.stop_after, self.down_for = after_gets, down_for

    def _go_away(self, down_for: float | None) -> None:
        self.stop()
        if down_for is not None:
            time.sleep(down_for)
            self.start()

    def gets_under(self, prefix: str) -> Counter[str]:
        """GET counts of the objects whose path starts with /bucket/prefix, by path below it."""
        with self._lock:
            return Counter({p[len(prefix) :]: n for p, n in self.gets.items() if p.startswith(prefix)})


def client_environment(endpoint: str, home: Path, *, secret: str) -> dict[str, str]:
    """The environment of a client of the server: its endpoint, test credentials with `secret`, no AWS files of the
    machine, and no hidden botocore retries (the retry policy in data/object_store.py is the one that counts)."""
    return {
        "S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }
