"""The LUPerson-MLLM stand-in (pretraining set): one image per identity, captioned in all four styles."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.synthetic.attributes import sample_attributes
from data.synthetic.caption_writer import CAPTION_FILES, make_caption
from data.synthetic.output import IMAGE_DIR, save_jpeg, write_json, write_jsonl
from data.synthetic.render import draw_person
from data.synthetic.streams import Stream, stream_rng
from data.synthetic.templates import DYNAMIC_TEMPLATES


def pretraining_image_name(index: int, count: int) -> str:
    return f"{index:0{max(6, len(str(count - 1)))}d}.jpg"


def write_pretraining_set(
    root: Path,
    *,
    seed: int,
    count: int,
    size: tuple[int, int],
    noise_fraction: float,
    dirty_fraction: float,
    on_image: Callable[[], None],
) -> dict[str, Any]:
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True)
    captions: dict[str, dict[str, str]] = {name: {} for name in CAPTION_FILES}
    attribute_rows, noise_rows, dirt_rows = [], [], []
    for index in range(count):
        name = pretraining_image_name(index, count)
        attrs = sample_attributes(stream_rng(seed, Stream.PRETRAIN_PERSON, index))
        save_jpeg(draw_person(attrs, stream_rng(seed, Stream.PRETRAIN_SCENE, index), size), image_dir / name)
        attribute_rows.append({"image": name, **dataclasses.asdict(attrs)})
        for file_index, (file_name, (instruction, captioner)) in enumerate(CAPTION_FILES.items()):
            caption = make_caption(
                attrs,
                instruction=instruction,
                captioner=captioner,
                rng=stream_rng(seed, Stream.PRETRAIN_CAPTION, index, file_index),
                noise_fraction=noise_fraction,
                dirty_fraction=dirty_fraction,
            )
            captions[file_name][name] = caption.text
            if caption.noise is not None:
                noise_rows.append(dataclasses.asdict(dataclasses.replace(caption.noise, file=file_name, image=name)))
            if caption.dirt is not None:
                dirt_rows.append({"file": file_name, "image": name, **dataclasses.asdict(caption.dirt)})
        on_image()
    for file_name, mapping in captions.items():
        write_json(root / file_name, mapping)
    write_jsonl(root / "attributes.jsonl", attribute_rows)
    write_jsonl(root / "noise_words.jsonl", noise_rows)
    write_jsonl(root / "dirty_captions.jsonl", dirt_rows)
    caption_count = count * len(CAPTION_FILES)
    dynamic_count = count * sum(instruction == "dynamic" for instruction, _ in CAPTION_FILES.values())
    return {
        "images": count,
        "captions": caption_count,
        "noisy_captions": len(noise_rows),
        "noise_fraction": round(len(noise_rows) / caption_count, 4),
        "dirty_captions": len(dirt_rows),
        "dirty_fraction": round(len(dirt_rows) / dynamic_count, 4),
        "templates": len(DYNAMIC_TEMPLATES),
    }
