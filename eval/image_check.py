"""Gallery images that exist but do not decode are treated like missing ones: an error naming them, or, with
--skip-missing, dropped with their captions and listed. Each image is decoded once here, before the model is
built, so that a bad file fails the run in seconds instead of inside feature extraction."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from data.datasets import MISSING_PATHS_SHOWN, DatasetError, RetrievalSplit, _without_images


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.convert("RGB").load()
        return True
    except Exception:  # any decoder failure (PIL raises OSError, SyntaxError, ValueError, ...) means unusable
        return False


def undecodable_images(split: RetrievalSplit, *, threads: int = 4) -> list[Path]:
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL's decoders release the GIL
        ok = list(pool.map(_decodes, split.image_paths))
    return [path for path, good in zip(split.image_paths, ok, strict=True) if not good]


def drop_undecodable(split: RetrievalSplit, *, skip: bool) -> tuple[RetrievalSplit, list[Path]]:
    """(the split less its undecodable images and their captions, those images); without `skip` they raise."""
    bad = undecodable_images(split)
    if not bad:
        return split, []
    shown = ", ".join(str(path) for path in bad[:MISSING_PATHS_SHOWN])
    if not skip:
        raise DatasetError(
            f"{len(bad)} of {len(split.image_paths)} images of split {split.split!r} cannot be decoded "
            f"(first: {shown}); pass --skip-missing to drop them with their captions"
        )
    kept = _without_images(split, set(bad))
    kept.missing_images = split.missing_images + bad
    return kept, bad
