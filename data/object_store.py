"""Shard folders in object storage: fetching their files into a node's local cache, and uploading a packing.

A remote shard folder is `s3://bucket/prefix` (AWS S3, or any S3-compatible store named by the S3_ENDPOINT_URL
environment variable), `http(s)://host/path` (read-only), or any other scheme mosaicml-streaming's downloader knows
(gs://, oci://, ...). Credentials are boto3's: the environment, then ~/.aws; they never enter a URL, a config or a
message here. S3 objects are fetched by mosaicml-streaming's S3 downloader (boto3), http(s) ones by urllib.

The cache is a local folder per node: every file is fetched once, under a lock file that the ranks and data workers
sharing the cache take in turn, to a hidden partial name renamed when complete, so a reader sees whole files only.
A store that does not answer is retried with doubling waits (`RetryPolicy`); after the last attempt
`RemoteUnavailable` names the endpoint and the file. A file the store answers "not found" for is missing, which the
reader counts like a missing local shard."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data.outputs import atomic_file, sha256_of

log = logging.getLogger(__name__)

LOCKS = ".fetch-locks"  # in the cache folder: one lock file per fetched name
NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied"}


class RemoteUnavailable(ValueError):
    """The store did not answer within the retry policy; the message names the endpoint and the file."""


def is_remote(location: str | Path | None) -> bool:
    return location is not None and "://" in str(location) and not str(location).startswith("file://")


def join(remote: str, name: str) -> str:
    return f"{remote.rstrip('/')}/{name}"


def redact(url: str) -> str:
    """A URL without user info or query string (where presigned signatures and passwords would be)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def endpoint_of(remote: str) -> str:
    """The server a remote URL is fetched from, for messages."""
    parts = urllib.parse.urlsplit(remote)
    if parts.scheme == "s3":
        endpoint = os.environ.get("S3_ENDPOINT_URL")
        return f"S3 endpoint {redact(endpoint)}" if endpoint else "S3 endpoint (AWS default)"
    return f"endpoint {parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


@dataclass(frozen=True)
class RetryPolicy:
    """How long a fetch or upload waits for a store that does not answer: `attempts` tries, the waits between them
    doubling from `first_wait_s` up to `max_wait_s` (the defaults wait about 2 minutes in all)."""

    attempts: int = 8
    first_wait_s: float = 1.0
    max_wait_s: float = 60.0
    timeout_s: float = 120.0  # one request

    def waits(self) -> list[float]:
        return [min(self.first_wait_s * 2**k, self.max_wait_s) for k in range(self.attempts - 1)]


def is_not_found(error: BaseException) -> bool:
    """The store answered that the object does not exist (or may not be read): retrying will not change it."""
    if isinstance(error, FileNotFoundError):
        return True
    if isinstance(error, urllib.error.HTTPError):
        return error.code in (403, 404, 410)
    response = getattr(error, "response", None)  # botocore's ClientError
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) in NOT_FOUND_CODES


def short_error(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def with_retries(action: Callable[[], None], *, policy: RetryPolicy, what: str, remote: str) -> None:
    """Runs `action` until it succeeds; a not-found error passes through at once; after the last attempt,
    RemoteUnavailable naming the endpoint and `what`."""
    waits, started = policy.waits(), time.monotonic()
    for attempt in range(policy.attempts):
        try:
            action()
            return
        except Exception as error:
            if is_not_found(error):
                raise
            if attempt == len(waits):
                raise RemoteUnavailable(
                    f"{endpoint_of(remote)} did not answer for {what} of {redact(remote)} after {policy.attempts} "
                    f"attempts over {time.monotonic() - started:.0f} s ({short_error(error)})"
                ) from None
            log.warning(
                "%s of %s: %s; attempt %d of %d in %.1f s",
                what, redact(remote), short_error(error), attempt + 2, policy.attempts, waits[attempt],
            )  # fmt: skip
            time.sleep(waits[attempt])


def download(url: str, target: Path, *, timeout: float) -> None:
    """One file, written to `target` (which must not exist)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https"):
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
        return
    from streaming.base.storage.download import CloudDownloader

    downloader = CloudDownloader.get(url)
    try:
        downloader.download(url, str(target), timeout)
    finally:
        downloader.clean_up()


def require_boto3(remote: str) -> None:
    """s3:// goes through boto3, an extra (pyproject.toml) that a PyTorch image may lack: say so before any fetch."""
    if urllib.parse.urlsplit(remote).scheme != "s3":
        return
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise ValueError(
            f"{redact(remote)} is an s3:// location, which needs boto3: pip install 'boto3>=1.40,<2' "
            "(or a wheelhouse made with --with s3)"
        ) from None


class ShardCache:
    """The local cache of a remote shard folder: `fetch` makes files present, each fetched once per node."""

    def __init__(self, remote: str, local: Path, policy: RetryPolicy | None = None) -> None:
        require_boto3(remote)
        self.remote, self.local, self.policy = remote, Path(local), policy or RetryPolicy()

    def fetch(self, names: list[str], *, unit: str | None = None) -> bool:
        """Makes local/name present for every name (paths relative to the shard folder), under one lock per `unit`
        (the shard these files make up). False when the store has no such object."""
        if all((self.local / name).is_file() for name in names):
            return True
        unit = unit or names[0]
        locks = self.local / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{unit.replace('/', '_')}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another rank or worker may be fetching it: wait, then find it here
            try:
                for name in names:
                    if not (self.local / name).is_file():
                        self._fetch_one(name)
            except Exception as error:
                if is_not_found(error):
                    return False
                raise
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return True

    def _fetch_one(self, name: str) -> None:
        target = self.local / name
        target.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> None:
            with atomic_file(target) as partial:
                partial.unlink(missing_ok=True)
                download(join(self.remote, name), partial, timeout=self.policy.timeout_s)

        with_retries(attempt, policy=self.policy, what=name, remote=self.remote)


def _bucket_and_key(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc, parts.path.lstrip("/")


def s3_client():
    """boto3's S3 client for S3_ENDPOINT_URL (AWS when unset), with boto3's own credential chain."""
    require_boto3("s3://")
    import boto3

    return boto3.client(
        "s3", endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None
    )  # one per call, no threads share it


def uploaded_sha256(client, remote: str, name: str, *, policy: RetryPolicy) -> str | None:
    """The sha256 that remote/name was tagged with when uploaded, or None when there is no such object (or no tag)."""
    bucket, key = _bucket_and_key(join(remote, name))
    found: list[dict] = []
    try:
        with_retries(
            lambda: found.append(client.head_object(Bucket=bucket, Key=key)), policy=policy, what=name, remote=remote
        )
    except Exception as error:
        if is_not_found(error):
            return None
        raise
    return found[0].get("Metadata", {}).get("sha256")


def upload_folder(local: Path, remote: str, names: list[str], *, policy: RetryPolicy) -> int:
    """Uploads local/name to remote/name for each name in order, each tagged with its sha256, skipping those already
    there with the same sha256 (a rerun after an interruption); returns how many were uploaded. s3:// only."""
    if urllib.parse.urlsplit(remote).scheme != "s3":
        raise ValueError(f"uploads go to s3:// URLs only (got {redact(remote)})")
    client, uploaded = s3_client(), 0
    for name in names:
        digest = sha256_of(local / name)
        if uploaded_sha256(client, remote, name, policy=policy) == digest:
            continue
        bucket, key = _bucket_and_key(join(remote, name))
        with_retries(
            lambda b=bucket, k=key, n=name, d=digest: client.upload_file(
                str(local / n), b, k, ExtraArgs={"Metadata": {"sha256": d}}
            ),
            policy=policy,
            what=name,
            remote=remote,
        )
        uploaded += 1
    return uploaded
