"""CLIP BPE with IRRA's <|mask|> slot: same ids as open_clip everywhere except the dropped last merge."""

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from data.tokenizer import EOT_ID, MASK_ID, PAD_ID, SOT_ID, VOCAB_SIZE, CaptionTokenizer

CAPTIONS = [
    "A woman in a red coat, black trousers and white sneakers, carrying a brown shoulder bag.",
    "The MAN wears   a dark-blue T-shirt & jeans; his hair is short!!",
    "Ein Mann mit Rucksack (grün) — 3 Taschen, 42 cm",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer(context_length=77)


def test_constants(tokenizer: CaptionTokenizer) -> None:
    assert (PAD_ID, MASK_ID, SOT_ID, EOT_ID, VOCAB_SIZE) == (0, 49405, 49406, 49407, 49408)
    assert tokenizer.vocab_size == VOCAB_SIZE
    assert len(tokenizer.encoder) == MASK_ID  # the BPE symbols fill every id below the three specials


def test_ids_equal_open_clip(tokenizer: CaptionTokenizer) -> None:
    reference = SimpleTokenizer()
    for caption in CAPTIONS:
        assert tokenizer.encode(caption) == reference.encode(caption), caption
    assert torch.equal(tokenizer(CAPTIONS), reference(CAPTIONS, context_length=77))


def test_specials_shape_and_padding(tokenizer: CaptionTokenizer) -> None:
    ids = tokenizer(["a man", "a woman with a long black ponytail"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[:, 0].tolist() == [SOT_ID, SOT_ID]
    n = len(tokenizer.encode("a man"))
    assert ids[0, n + 1] == EOT_ID
    assert (ids[0, n + 2 :] == PAD_ID).all()
    assert tokenizer("a man").shape == (1, 77)  # a single string is a batch of one


def test_argmax_is_eot_position(tokenizer: CaptionTokenizer) -> None:
    ids = tokenizer(CAPTIONS)
    for row in ids:
        assert row[row.argmax()] == EOT_ID
        assert row.argmax() == (row == EOT_ID).nonzero()[0, 0]


def test_truncation_keeps_eot_last(tokenizer: CaptionTokenizer) -> None:
    long_text = " ".join(["a person wearing a grey hoodie and blue jeans"] * 20)
    ids = tokenizer(long_text)[0]
    assert ids[76] == EOT_ID and ids.argmax() == 76
    assert ids[0] == SOT_ID and (ids[1:76] != PAD_ID).all()
    assert ids[1:76].tolist() == tokenizer.encode(long_text)[:75]
    short = CaptionTokenizer(context_length=5)("one two three four five six")[0]
    assert short.tolist() == [SOT_ID, *tokenizer.encode("one two three"), EOT_ID]


def test_dropped_merge_never_yields_mask(tokenizer: CaptionTokenizer) -> None:
    # The last merge in the file is ('jeky', 'll</w>'): IRRA raised a KeyError on "jekyll"; we split it instead.
    ids = tokenizer.encode("Jekyll and Hyde, jekyll")
    assert MASK_ID not in ids and all(i < MASK_ID for i in ids)
    assert tokenizer.decode(ids) == "jekyll and hyde , jekyll"


def test_decode_round_trip(tokenizer: CaptionTokenizer) -> None:
    plain = "a woman in a red coat with black shoes"
    assert tokenizer.decode(tokenizer(plain)[0]) == plain
    for caption in CAPTIONS:
        row = tokenizer(caption)[0]
        assert tokenizer.encode(tokenizer.decode(row)) == tokenizer.encode(caption)
    row = tokenizer("a red coat")[0].clone()
    row[2] = MASK_ID
    assert tokenizer.decode(row) == "a coat"
    assert tokenizer.decode(row, keep_mask=True) == "a <|mask|> coat"
    assert tokenizer.decode(tokenizer.encode("wow!! ok")) == "wow !! ok"
