"""Readers for the three text-to-image person re-id benchmarks (docs/method.md).

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


class BenchmarkError(ValueError):
    """A benchmark root, annotation file or split that cannot be read; the message is one line naming the file."""


@dataclass(frozen=True)
class BenchmarkFormat:
    """How one benchmark lays out its annotation file."""

    display_name: str
    annotation_file: str  # file name inside the dataset root
    image_path_field: str  # entry field holding the image path relative to imgs/
    splits: tuple[str, ...]
    pid_offset: int  # pid = id - pid_offset


DATASETS: dict[str, BenchmarkFormat] = {
    "cuhk-pedes": BenchmarkFormat("CUHK-PEDES", "reid_raw.json", "file_path", ("train", "val", "test"), pid_offset=1),
    "icfg-pedes": BenchmarkFormat("ICFG-PEDES", "ICFG-PEDES.json", "file_path", ("train", "test"), pid_offset=0),
    "rstpreid": BenchmarkFormat("RSTPReid", "data_captions.json", "img_path", ("train", "val", "test"), pid_offset=0),
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
    """Read one split of a benchmark. Missing image files raise BenchmarkError unless `skip_missing`,
    which drops them with their captions and lists them in `missing_images`."""
    benchmark = _benchmark_format(dataset)
    if split not in benchmark.splits:
        raise BenchmarkError(
            f"{benchmark.display_name} has no split {split!r} (valid: {', '.join(benchmark.splits)}) "
            f"in {benchmark.annotation_file}"
        )
    root = Path(root).expanduser().absolute()
    annotation_path = _annotation_path(benchmark, root)
    entries = [entry for entry in _read_entries(benchmark, annotation_path) if entry["split"] == split]
    if not entries:
        raise BenchmarkError(f"{annotation_path} has no entries with split {split!r}")
    loaded = _split_from_entries(entries, benchmark=benchmark, image_dir=root / IMAGE_DIR, split=split)
    missing = [path for path in loaded.image_paths if not path.is_file()]
    if missing and not skip_missing:
        shown = ", ".join(str(path) for path in missing[:MISSING_PATHS_SHOWN])
        raise BenchmarkError(
            f"{len(missing)} of {len(loaded.image_paths)} images of split {split!r} in {annotation_path} are missing "
            f"(first: {shown}); pass skip_missing=True to drop them"
        )
    return _without_images(loaded, set(missing)) if missing else loaded


def split_stats(split: RetrievalSplit) -> dict[str, int]:
    """Counts in the form the papers report them: distinct ids, images, captions."""
    return {"ids": len(set(split.image_pids)), "images": len(split.image_paths), "captions": len(split.captions)}


def _benchmark_format(dataset: str) -> BenchmarkFormat:
    key = dataset.lower()
    if key not in DATASETS:
        raise BenchmarkError(f"unknown dataset {dataset!r} (valid: {', '.join(DATASETS)})")
    return DATASETS[key]


def _annotation_path(benchmark: BenchmarkFormat, root: Path) -> Path:
    if not root.is_dir():
        raise BenchmarkError(
            f"{benchmark.display_name} root {root} is not a directory (expected it to hold "
            f"{benchmark.annotation_file} and {IMAGE_DIR}/)"
        )
    annotation_path = root / benchmark.annotation_file
    if not annotation_path.is_file():
        raise BenchmarkError(
            f"{benchmark.display_name} annotation file {benchmark.annotation_file} not found in {root}"
        )
    return annotation_path


def _read_entries(benchmark: BenchmarkFormat, annotation_path: Path) -> list[dict[str, Any]]:
    """Parse the annotation file and check every entry's fields (all splits, so a broken file fails early)."""
    try:
        entries = json.loads(annotation_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkError(
            f"{annotation_path} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise BenchmarkError(f"cannot read {annotation_path}: {error}") from None
    if not isinstance(entries, list):
        raise BenchmarkError(f"{annotation_path} must hold a JSON list of entries (got {type(entries).__name__})")
    for index, entry in enumerate(entries):
        _check_entry(entry, index=index, benchmark=benchmark, annotation_path=annotation_path)
    return entries


def _check_entry(entry: Any, *, index: int, benchmark: BenchmarkFormat, annotation_path: Path) -> None:
    where = f"{annotation_path} entry {index}"
    if not isinstance(entry, dict):
        raise BenchmarkError(f"{where} must be a JSON object (got {type(entry).__name__})")
    for field_name in ("id", "split", "captions", benchmark.image_path_field):
        if field_name not in entry:
            raise BenchmarkError(f"{where} is missing field {field_name!r}")
    if isinstance(entry["id"], bool) or not isinstance(entry["id"], int):
        raise BenchmarkError(f"{where} field 'id' must be an integer (got {entry['id']!r})")
    if not isinstance(entry["split"], str):
        raise BenchmarkError(f"{where} field 'split' must be a string (got {entry['split']!r})")
    if not isinstance(entry[benchmark.image_path_field], str) or not entry[benchmark.image_path_field]:
        raise BenchmarkError(f"{where} field {benchmark.image_path_field!r} must be a non-empty string path")
    captions = entry["captions"]
    if not isinstance(captions, list) or not all(isinstance(caption, str) for caption in captions):
        raise BenchmarkError(f"{where} field 'captions' must be a list of strings (got {type(captions).__name__})")


def _split_from_entries(
    entries: list[dict[str, Any]], *, benchmark: BenchmarkFormat, image_dir: Path, split: str
) -> RetrievalSplit:
    loaded = RetrievalSplit(
        dataset=benchmark.display_name,
        split=split,
        image_paths=[],
        image_pids=[],
        captions=[],
        caption_pids=[],
        caption_image_indices=[],
    )
    for image_index, entry in enumerate(entries):
        pid = entry["id"] - benchmark.pid_offset
        loaded.image_paths.append(image_dir / entry[benchmark.image_path_field])
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
