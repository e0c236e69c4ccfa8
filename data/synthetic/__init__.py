"""Procedurally drawn pedestrians with MLLM-style captions, as a deterministic stand-in for LUPerson-MLLM and
CUHK-PEDES (docs/method.md). `python -m data.synthetic --out DIR` runs it (flags in cli.py).

Modules, in the order the data flows:

    streams.py      seeded random streams: what makes every draw reproducible
    attributes.py   attribute vocabularies; PersonAttributes and how an identity is drawn
    render.py       the scene per image, background and lighting; figure.py draws the person in body units
    templates.py    the dynamic-instruction template bank and leaked markup, as plain data
    pieces.py       a caption as text, attribute words and articles, and how it is rendered to a string
    noise.py        wrong attribute words and dirty (unfilled slot, markup) captions
    captions.py     the static and dynamic caption styles and make_caption
    pretraining.py  the LUPerson-MLLM stand-in; cuhk.py the CUHK-PEDES-layout set
    output.py       image and JSON writers shared by both; generate.py ties it all together

Layout written under --out:

    luperson_mllm/
        imgs/000123.jpg             one image per identity (as in LUPerson, each image is its own pid)
        Ts-qwen.json, Ts-shikra.json   {"000123.jpg": caption}: static instruction, two captioner styles
        Td-qwen.json, Td-shikra.json   dynamic instruction: one template of templates.py drawn per caption
        attributes.jsonl            {"image": "000123.jpg", <PersonAttributes fields>} per image
        noise_words.jsonl           one NoiseRecord per caption holding a wrong attribute word
        dirty_captions.jsonl        {"file", "image", "kind": "slot" | "markup", "marker"} per dirty caption
    cuhk_pedes/
        imgs/{train,val,test}/p0007_2.jpg
        reid_raw.json               [{"split", "captions", "file_path", "processed_tokens", "id"}], ids 1-based
        attributes.jsonl            {"id", "split", <PersonAttributes fields>} per identity

Every random draw comes from a numpy Generator seeded by (seed, stream, index, ...), so an image and its captions
depend only on the seed and their own index, never on generation order or on how many others are made.
"""

from data.synthetic.attributes import ATTRIBUTE_VOCABULARY, PersonAttributes, sample_attributes
from data.synthetic.caption_writer import (
    CAPTION_FILES,
    Caption,
    fill_template,
    make_caption,
    slot_fillers,
    static_qwen_pieces,
    static_shikra_pieces,
)
from data.synthetic.cli import main
from data.synthetic.cuhk import draw_distinct_identities, processed_tokens
from data.synthetic.errors import SyntheticDataError
from data.synthetic.generate import CUHK_DIR, PRETRAIN_DIR, generate
from data.synthetic.noise import Dirt, NoiseRecord, is_dirty
from data.synthetic.pieces import Article, AttributeWord, Piece, render_pieces
from data.synthetic.pretraining import pretraining_image_name
from data.synthetic.render import Scene, body_box, draw_person, render_person, sample_scene, upper_garment_box
from data.synthetic.streams import Stream, stream_rng

__all__ = [
    "ATTRIBUTE_VOCABULARY",
    "CAPTION_FILES",
    "CUHK_DIR",
    "PRETRAIN_DIR",
    "Article",
    "AttributeWord",
    "Caption",
    "Dirt",
    "NoiseRecord",
    "PersonAttributes",
    "Piece",
    "Scene",
    "Stream",
    "SyntheticDataError",
    "body_box",
    "draw_distinct_identities",
    "draw_person",
    "fill_template",
    "generate",
    "is_dirty",
    "main",
    "make_caption",
    "pretraining_image_name",
    "processed_tokens",
    "render_person",
    "render_pieces",
    "sample_attributes",
    "sample_scene",
    "slot_fillers",
    "static_qwen_pieces",
    "static_shikra_pieces",
    "stream_rng",
    "upper_garment_box",
]
