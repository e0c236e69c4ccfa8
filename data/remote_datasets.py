"""A benchmark folder in object storage (s3://, http(s)://, ...), fetched into a local cache folder to be read there.

The remote folder has the layout of a local one (data/datasets.py): the annotation file and `imgs/`. The annotation
file is fetched first, then the images its entries of the wanted splits name, each once (data/object_store.py's
ShardCache: a lock per file, retries with doubling waits, whole files only); a warm cache fetches nothing. An image
the store does not have is left missing, for load_split to report (or drop with skip_missing). The cache records
the folder it mirrors and refuses to serve another one."""

from __future__ import annotations

import fcntl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from data.datasets import DATASETS, IMAGE_DIR, DatasetError, image_names
from data.object_store import RetryPolicy, ShardCache, is_remote, redact

MIRROR_FILE = ".mirror-of"  # in the cache: the URL of the folder it holds, without credentials
FETCH_THREADS = 8  # images fetched at once


def local_root(
    dataset: str, root: str | Path, *, cache: Path | None, splits: tuple[str, ...], policy: RetryPolicy | None = None
) -> Path:
    """`root` itself when it is local; for a remote `root`, the cache folder holding its annotation file and the
    images of `splits`, fetched first."""
    if not is_remote(root):
        return Path(root)
    if cache is None:
        raise DatasetError(
            f"the benchmark root {redact(str(root))} is a URL: pass --cache DIR, a local folder to fetch it into"
        )
    return fetch_benchmark(dataset, str(root), Path(cache), splits=splits, policy=policy)


def fetch_benchmark(
    dataset: str, remote: str, cache: Path, *, splits: tuple[str, ...], policy: RetryPolicy | None = None
) -> Path:
    layout = DATASETS[dataset]
    claim_cache(cache, remote)
    try:
        store = ShardCache(remote, cache, policy)
        if not store.fetch([layout.annotation_file]):
            raise DatasetError(
                f"{layout.display_name} annotation file {layout.annotation_file} not found in {redact(remote)}"
            )
        names = [f"{IMAGE_DIR}/{name}" for name in image_names(dataset, cache / layout.annotation_file, splits)]
        for name in names:
            if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                raise DatasetError(
                    f"{redact(remote)}/{layout.annotation_file} names an image outside the folder: {name}"
                )
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            list(pool.map(lambda name: store.fetch([name]), names))  # False (not in the store): left missing
    except DatasetError:
        raise
    except ValueError as error:  # RemoteUnavailable, or boto3 missing for s3://
        raise DatasetError(str(error)) from None
    return cache


def claim_cache(cache: Path, remote: str) -> None:
    """The cache holds one remote folder: a new or empty one is claimed for `remote`, one of another is refused (the
    ranks of a run claim it at once, in turn under a lock on the marker)."""
    if cache.exists() and not cache.is_dir():
        raise DatasetError(f"the cache {cache} is an existing file; name a folder")
    marker, wanted = cache / MIRROR_FILE, redact(remote).rstrip("/")
    if not marker.exists() and cache.is_dir() and any(cache.iterdir()):
        raise DatasetError(f"the cache {cache} is not empty and holds no copy of a remote folder; name another one")
    cache.mkdir(parents=True, exist_ok=True)
    with marker.open("a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        held = handle.read().strip()
        if not held:
            handle.write(wanted + "\n")
        elif held != wanted:
            raise DatasetError(f"the cache {cache} holds {held}, not {wanted}; name another cache folder")
