"""Readers for the three text-to-image person re-id datasets (CUHK-PEDES, ICFG-PEDES, RSTPReid; formats in docs/method.md).

Each dataset root holds one annotation file and an `imgs/` folder beside it:

    cuhk-pedes   reid_raw.json        [{split, captions, file_path, processed_tokens, id}]   train / val / test
    icfg-pedes   ICFG-PEDES.json      same fields                                            train / test
    rstpreid     data_captions.json   [{id, img_path, captions, split}]                      train / val / test

An entry is one image; its captions, flattened in file order, become the split's captions (the queries of
a test split). pid = id - pid_offset, with offset 1 for CUHK-PEDES (the reference implementation's train
convention, applied to every split so that image and caption pids always agree) and 0 for the others.
Only the fields used here are required; `processed_tokens` is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_DIR = "imgs"
MISSING_PATHS_SHOWN = 3


class DatasetError(ValueError):
    """A dataset root, annotation file or split that cannot be read; the message is one line naming the file."""


@dataclass(frozen=True)
class DatasetFormat:
    """How one dataset lays out its annotation file."""

    display_name: str
    annotation_file: str  # file name inside the dataset root
    image_path_field: str  # entry field holding the image path relative to imgs/
    splits: tuple[str, ...]
    pid_offset: int  # pid = id - pid_offset


DATASETS: dict[str, DatasetFormat] = {
    "cuhk-pedes": DatasetFormat("CUHK-PEDES", "reid_raw.json", "file_path", ("train", "val", "test"), pid_offset=1),
    "icfg-pedes": DatasetFormat("ICFG-PEDES", "ICFG-PEDES.json", "file_path", ("train", "test"), pid_offset=0),
    "rstpreid": DatasetFormat("RSTPReid", "data_captions.json", "img_path", ("train", "val", "test"), pid_offset=0),
}


@dataclass
class RetrievalSplit:
    """One split as parallel lists: images (the gallery) and captions (the queries), each with its pid."""

    dataset: str  # display name, e.g. "CUHK-PEDES"
    split: str
    image_paths: list[Path]  # absolute: <root>/imgs/<file_path>
    image_pids: list[int]
    captions: list[str]  # every entry's captions, flattened in file order
    caption_pids: list[int]
    caption_image_indices: list[int]  # caption i describes image_paths[caption_image_indices[i]]
    missing_images: list[Path] = field(default_factory=list)  # dropped with their captions (skip_missing=True)


def load_split(dataset: str, root: str | Path, split: str, *, skip_missing: bool = False) -> RetrievalSplit:
    """Read one split of a layout. Missing image files raise DatasetError unless `skip_missing`,
    which drops them with their captions and lists them in `missing_images`."""
    layout = _dataset_format(dataset)
    if split not in layout.splits:
        raise DatasetError(
            f"{layout.display_name} has no split {split!r} (valid: {', '.join(layout.splits)}) "
            f"in {layout.annotation_file}"
        )
    root = Path(root).expanduser().absolute()
    annotation_path = _annotation_path(layout, root)
    entries = [entry for entry in _read_entries(layout, annotation_path) if entry["split"] == split]
    if not entries:
        raise DatasetError(f"{annotation_path} has no entries with split {split!r}")
    loaded = _split_from_entries(entries, layout=layout, image_dir=root / IMAGE_DIR, split=split)
    missing = [path for path in loaded.image_paths if not path.is_file()]
    if missing and not skip_missing:
        shown = ", ".join(str(path) for path in missing[:MISSING_PATHS_SHOWN])
        raise DatasetError(
            f"{len(missing)} of {len(loaded.image_paths)} images of split {split!r} in {annotation_path} are missing "
            f"(first: {shown}); pass skip_missing=True to drop them"
        )
    return _without_images(loaded, set(missing)) if missing else loaded


def image_names(dataset: str, annotation_path: Path, splits: tuple[str, ...]) -> list[str]:
    """The image paths (relative to imgs/) of the entries of `splits` in an annotation file, checked as load_split
    checks them, without duplicates, in file order: what a copy of the benchmark needs besides the file itself."""
    layout = _dataset_format(dataset)
    entries = _read_entries(layout, annotation_path)
    return list(dict.fromkeys(e[layout.image_path_field] for e in entries if e["split"] in splits))


def split_stats(split: RetrievalSplit) -> dict[str, int]:
    """Counts in the form the papers report them: distinct ids, images, captions."""
    return {"ids": len(set(split.image_pids)), "images": len(split.image_paths), "captions": len(split.captions)}


def _dataset_format(dataset: str) -> DatasetFormat:
    key = dataset.lower()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r} (valid: {', '.join(DATASETS)})")
    return DATASETS[key]


def _annotation_path(layout: DatasetFormat, root: Path) -> Path:
    if not root.is_dir():
        raise DatasetError(
            f"{layout.display_name} root {root} is not a directory (expected it to hold "
            f"{layout.annotation_file} and {IMAGE_DIR}/)"
        )
    annotation_path = root / layout.annotation_file
    if not annotation_path.is_file():
        raise DatasetError(f"{layout.display_name} annotation file {layout.annotation_file} not found in {root}")
    return annotation_path


def _read_entries(layout: DatasetFormat, annotation_path: Path) -> list[dict[str, Any]]:
    """Parse the annotation file and check every entry's fields (all splits, so a broken file fails early)."""
    try:
        entries = json.loads(annotation_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{annotation_path} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {annotation_path}: {error}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{annotation_path} must hold a JSON list of entries (got {type(entries).__name__})")
    for index, entry in enumerate(entries):
        _check_entry(entry, index=index, layout=layout, annotation_path=annotation_path)
    return entries


def _check_entry(entry: Any, *, index: int, layout: DatasetFormat, annotation_path: Path) -> None:
    where = f"{annotation_path} entry {index}"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} must be a JSON object (got {type(entry).__name__})")
    for field_name in ("id", "split", "captions", layout.image_path_field):
        if field_name not in entry:
            raise DatasetError(f"{where} is missing field {field_name!r}")
    if isinstance(entry["id"], bool) or not isinstance(entry["id"], int):
        raise DatasetError(f"{where} field 'id' must be an integer (got {entry['id']!r})")
    if not isinstance(entry["split"], str):
        raise DatasetError(f"{where} field 'split' must be a string (got {entry['split']!r})")
    if not isinstance(entry[layout.image_path_field], str) or not entry[layout.image_path_field]:
        raise DatasetError(f"{where} field {layout.image_path_field!r} must be a non-empty string path")
    captions = entry["captions"]
    if not isinstance(captions, list) or not all(isinstance(caption, str) for caption in captions):
        raise DatasetError(f"{where} field 'captions' must be a list of strings (got {type(captions).__name__})")


def _split_from_entries(
    entries: list[dict[str, Any]], *, layout: DatasetFormat, image_dir: Path, split: str
) -> RetrievalSplit:
    loaded = RetrievalSplit(
        dataset=layout.display_name,
        split=split,
        image_paths=[],
        image_pids=[],
        captions=[],
        caption_pids=[],
        caption_image_indices=[],
    )
    for image_index, entry in enumerate(entries):
        pid = entry["id"] - layout.pid_offset
        loaded.image_paths.append(image_dir / entry[layout.image_path_field])
        loaded.image_pids.append(pid)
        loaded.captions.extend(entry["captions"])
        loaded.caption_pids.extend([pid] * len(entry["captions"]))
        loaded.caption_image_indices.extend([image_index] * len(entry["captions"]))
    return loaded


def _without_images(loaded: RetrievalSplit, missing: set[Path]) -> RetrievalSplit:
    """The split less the missing images and their captions, with caption -> image indices renumbered."""
    kept_image_indices = [i for i, path in enumerate(loaded.image_paths) if path not in missing]
    new_index = {old: new for new, old in enumerate(kept_image_indices)}
    kept_captions = [c for c, image_index in enumerate(loaded.caption_image_indices) if image_index in new_index]
    return RetrievalSplit(
        dataset=loaded.dataset,
        split=loaded.split,
        image_paths=[loaded.image_paths[i] for i in kept_image_indices],
        image_pids=[loaded.image_pids[i] for i in kept_image_indices],
        captions=[loaded.captions[c] for c in kept_captions],
        caption_pids=[loaded.caption_pids[c] for c in kept_captions],
        caption_image_indices=[new_index[loaded.caption_image_indices[c]] for c in kept_captions],
        missing_images=[path for path in loaded.image_paths if path in missing],
    )
