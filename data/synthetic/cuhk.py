"""The CUHK-PEDES-layout set (train, val and the held-out test split): distinct identities, several images each,
two clean captions per image, written as reid_raw.json."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data.synthetic.attributes import PersonAttributes, sample_attributes
from data.synthetic.caption_writer import CAPTION_FILES, make_caption
from data.synthetic.errors import SyntheticDataError
from data.synthetic.output import IMAGE_DIR, save_jpeg, write_json, write_jsonl
from data.synthetic.render import draw_person
from data.synthetic.streams import Stream, stream_rng

MAX_UNIQUE_DRAWS_PER_IDENTITY = 50  # give up drawing distinct identities after this many tries per identity
TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def processed_tokens(caption: str) -> list[str]:
    """CUHK-PEDES style word tokens: lower case, punctuation dropped, hyphenated words kept whole."""
    return TOKEN_PATTERN.findall(caption.lower())


def draw_distinct_identities(seed: int, count: int) -> list[PersonAttributes]:
    """`count` identities whose captionable attributes all differ, from the CUHK person stream."""
    identities: list[PersonAttributes] = []
    seen: set[tuple[str | None, ...]] = set()
    for draw_index in range(count * MAX_UNIQUE_DRAWS_PER_IDENTITY):
        attrs = sample_attributes(stream_rng(seed, Stream.CUHK_PERSON, draw_index))
        if attrs.identity_key() not in seen:
            seen.add(attrs.identity_key())
            identities.append(attrs)
            if len(identities) == count:
                return identities
    raise SyntheticDataError(f"could not draw {count} distinct identities; ask for fewer test/train/val identities")


def _clean_caption_pair(attrs: PersonAttributes, rng: np.random.Generator) -> list[str]:
    """Two clean captions in two different (instruction, captioner) styles, as CUHK-PEDES has two per image."""
    styles = list(CAPTION_FILES.values())
    first, second = rng.choice(len(styles), size=2, replace=False)
    return [
        make_caption(attrs, instruction=styles[i][0], captioner=styles[i][1], rng=rng).text for i in (first, second)
    ]


def write_cuhk_set(
    root: Path,
    *,
    seed: int,
    identities_per_split: dict[str, int],
    images_per_identity: int,
    size: tuple[int, int],
    on_image: Callable[[], None],
) -> dict[str, Any]:
    # Test identities are drawn first so that the test set does not change with the train/val sizes.
    draw_order = ("test", "val", "train")
    drawn = draw_distinct_identities(seed, sum(identities_per_split.values()))
    by_split, offset = {}, 0
    for split in draw_order:
        by_split[split] = drawn[offset : offset + identities_per_split[split]]
        offset += identities_per_split[split]
    entries, attribute_rows, summary = [], [], {}
    next_id = 1  # CUHK-PEDES ids are 1-based and unique across splits, train first
    for split_code, split in enumerate(("train", "val", "test")):
        (root / IMAGE_DIR / split).mkdir(parents=True)
        for identity_index, attrs in enumerate(by_split[split]):
            person_id = next_id
            next_id += 1
            attribute_rows.append({"id": person_id, "split": split, **dataclasses.asdict(attrs)})
            for image_index in range(images_per_identity):
                file_path = f"{split}/p{person_id:04d}_{image_index}.jpg"
                scene_rng = stream_rng(seed, Stream.CUHK_SCENE, split_code, identity_index, image_index)
                save_jpeg(draw_person(attrs, scene_rng, size), root / IMAGE_DIR / file_path)
                caption_rng = stream_rng(seed, Stream.CUHK_CAPTION, split_code, identity_index, image_index)
                captions = _clean_caption_pair(attrs, caption_rng)
                entries.append(
                    {
                        "split": split,
                        "captions": captions,
                        "file_path": file_path,
                        "processed_tokens": [processed_tokens(caption) for caption in captions],
                        "id": person_id,
                    }
                )
                on_image()
        images = len(by_split[split]) * images_per_identity
        summary[split] = {"ids": len(by_split[split]), "images": images, "captions": 2 * images}
    write_json(root / "reid_raw.json", entries)
    write_jsonl(root / "attributes.jsonl", attribute_rows)
    return summary
