"""CLIP BPE tokenizer with the reference implementation's `<|mask|>` token (docs/method.md).

CLIP's vocabulary is full at 49,408 ids, so IRRA makes room for `<|mask|>` by dropping the last BPE merge
('jeky' + 'll</w>'). We drop it from the merge ranks as well, so BPE can never build the dropped symbol (IRRA
kept the rank and raised a KeyError on "jekyll"). Every other id equals open_clip's `SimpleTokenizer`.
"""

from __future__ import annotations

import gzip

import regex
import torch
from open_clip.tokenizer import basic_clean, bytes_to_unicode, default_bpe, get_pairs, whitespace_clean

PAD_ID = 0  # padding after EOT; id 0 is also the byte "!" inside a word, so decode only strips it after EOT
MASK_ID = 49405  # <|mask|>, in the slot of the dropped last merge
SOT_ID = 49406  # <|startoftext|>
EOT_ID = 49407  # <|endoftext|>; the largest id, so argmax(ids) finds it (EOT pooling)
VOCAB_SIZE = 49408

_NUM_MERGES = 49152 - 256 - 2  # merges CLIP uses from the file, before we drop the last one
_SPECIAL_IDS = frozenset({MASK_ID, SOT_ID, EOT_ID})
# CLIP's pre-tokenizer without the special-token alternatives: raw caption text cannot inject SOT/EOT/mask.
_WORD_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def _load_merges(bpe_path: str) -> list[tuple[str, ...]]:
    with gzip.open(bpe_path, "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]  # line 0 is the version header
    return merges[:-1]  # drop the last merge to free id 49405 for <|mask|>


class CaptionTokenizer:
    """Text -> (B, context_length) ids as [SOT] + BPE ids + [EOT], zero-padded; long texts end in EOT.

    Not transformers' `CLIPTokenizer`: there id 49405 is the last merge's symbol, here it is `<|mask|>`."""

    def __init__(self, context_length: int = 77, bpe_path: str | None = None) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 to hold SOT, one token and EOT (got {context_length})")
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = _load_merges(bpe_path or default_bpe())
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(merge) for merge in merges]
        assert len(vocab) == MASK_ID, f"BPE vocabulary has {len(vocab)} entries, expected {MASK_ID}"
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self._bpe_cache: dict[str, tuple[str, ...]] = {}  # word -> BPE symbols; caption vocabularies are small

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def _bpe(self, token: str) -> tuple[str, ...]:
        """Greedy lowest-rank merging of one pre-token (already byte-encoded), as in CLIP."""
        cached = self._bpe_cache.get(token)
        if cached is not None:
            return cached
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            bigram = min(get_pairs(word), key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._bpe_cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` after CLIP's cleaning and lower-casing; no SOT/EOT."""
        text = whitespace_clean(basic_clean(text)).lower()
        ids: list[int] = []
        for token in _WORD_PATTERN.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe(token))
        return ids

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """(B, context_length) int64 ids; a truncated text keeps EOT as its last token so argmax pooling works."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)  # (B, N)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text)][: self.context_length - 1] + [EOT_ID]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: list[int] | torch.Tensor, *, keep_mask: bool = False) -> str:
        """Text of one id sequence. Stops at EOT (what follows is padding) and skips SOT; `<|mask|>` is
        skipped too unless `keep_mask`, which helps to eyeball NAM-masked captions."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if EOT_ID in ids:
            ids = ids[: ids.index(EOT_ID)]
        while ids and ids[-1] == PAD_ID:  # padding without EOT; BPE never ends a word on id 0 ("!" without </w>)
            ids = ids[:-1]
        pieces: list[str] = []
        for i in ids:
            if i == MASK_ID and keep_mask:
                pieces.append("<|mask|></w>")  # printable ASCII maps to itself in CLIP's byte alphabet
            elif i not in _SPECIAL_IDS:
                pieces.append(self.decoder[i])
        data = bytes(self.byte_decoder[c] for c in "".join(pieces))
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()
