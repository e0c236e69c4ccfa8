"""How well NAM's token noise tells wrong attribute words from correct ones, on the synthetic LUPerson-MLLM set.

python -m eval.analysis.noise_auroc --checkpoint RUN_DIR --data DIR/luperson_mllm [--max-captions 4000] [--batch-size 64]
                           [--out FILE.json]
python -m eval.analysis.noise_auroc --config configs/X.yaml --data ...   # the untrained model: AUROC near 0.5

Tokens are scored as training scores them (docs/method.md): the unmasked caption runs through the first `tap_layer`
text blocks, the image through the vision tower, and r_i = 1 - max_j cos(text token i, image patch j). A word's
noise is the max (also the mean) of r over its BPE tokens. Wrong words are those recorded in noise_words.jsonl;
correct words are the attribute words the caption's phrases name ("long blonde hair", "a red t-shirt", "gray
shoes") at positions with no recorded error. AUROC counts ties as half; 1.0 means every wrong word is noisier
than every correct one. Captions are taken in (image, file) order, skipping dirty ones ("[...]", "<...>") as the
training loader replaces them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.caption_files import DIRTY_CAPTION, CaptionError, read_caption_file
from data.cli_errors import error_boundary, positive_int
from data.outputs import check_output_file, output_argument, write_text_atomically
from data.synthetic import ATTRIBUTE_VOCABULARY, CAPTION_FILES
from data.tokenizer import CaptionTokenizer
from data.transforms import eval_transform
from engine.config import ConfigError, load_config
from engine.method.nam import valid_token_mask
from engine.model import CLIPDualEncoder, build_model
from engine.runtime.checkpoint import CheckpointError, load_exported_model
from eval.report import describe_config_model
from kernels.token_patch_max_cosine import token_patch_max_cosine

NOISE_FILE = "noise_words.jsonl"
NOISE_RECORD_FIELDS = frozenset({"file", "image", "char_start", "char_end", "wrong", "attribute"})
IMAGE_DIR = "imgs"
# The phrases in which the synthetic captions name attributes, word by word: an attribute name stands for any
# value of its vocabulary, anything else is a literal word. The type vocabularies are disjoint, so a match
# tells which garment a colour word belongs to.
ATTRIBUTE_PHRASES: tuple[tuple[str, ...], ...] = (
    ("hair_length", "hair_colour", "hair"),  # "long blonde hair"
    ("upper_colour", "upper_type"),  # "red t-shirt"
    ("lower_colour", "lower_type"),  # "blue jeans"
    ("shoe_colour", "shoes"),  # "gray shoes"
    ("bag_colour", "bag_type"),  # "black shoulder bag"
    ("accessory_colour", "accessory_type"),  # "white hat"
)


class NoiseAurocError(ValueError):
    """A data folder, caption file or noise record that cannot be used; the message is one line."""


@dataclass(frozen=True)
class AttributeSpan:
    """One attribute word (or "shoulder bag") of a caption, by character span."""

    attribute: str
    char_start: int
    char_end: int
    wrong: bool


@dataclass(frozen=True)
class CaptionToScore:
    file: str
    image: str
    text: str
    words: tuple[AttributeSpan, ...]


@dataclass(frozen=True)
class WordNoise:
    attribute: str
    wrong: bool
    noise_max: float  # max of r over the word's tokens
    noise_mean: float


def _phrase_pattern(phrase: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for index, word in enumerate(phrase):
        if word in ATTRIBUTE_VOCABULARY:
            values = sorted(ATTRIBUTE_VOCABULARY[word], key=len, reverse=True)  # "t-shirt" before "shirt"
            parts.append(f"(?P<w{index}>" + "|".join(re.escape(v) for v in values) + ")")
        else:
            parts.append(re.escape(word))
    return re.compile(r"(?<![\w-])" + " ".join(parts) + r"(?![\w-])", re.IGNORECASE)


_PHRASE_PATTERNS = [(phrase, _phrase_pattern(phrase)) for phrase in ATTRIBUTE_PHRASES]


def attribute_spans(text: str, wrong_spans: dict[tuple[int, int], str]) -> list[AttributeSpan]:
    """Every attribute word the caption's phrases name, marked wrong where `wrong_spans` ((start, end) ->
    attribute) records an error; a recorded span that no phrase matches is still kept as a wrong word."""
    found: dict[tuple[int, int], str] = {}
    for phrase, pattern in _PHRASE_PATTERNS:
        for match in pattern.finditer(text):
            for index, word in enumerate(phrase):
                if word in ATTRIBUTE_VOCABULARY:
                    found[match.span(f"w{index}")] = word
    found |= {span: attribute for span, attribute in wrong_spans.items() if span not in found}
    return [AttributeSpan(found[span], span[0], span[1], span in wrong_spans) for span in sorted(found)]


def word_token_spans(tokenizer: CaptionTokenizer, text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token range [a, b) in tokenizer.encode(text) (no SOT) of each character span.

    CLIP's BPE never merges across whitespace or a letter/punctuation boundary, so when the spans start and end
    on word boundaries, encoding the text piece by piece between span edges gives the caption's own ids; the
    result is checked against them and a NoiseAurocError raised when they differ."""
    edges = sorted({0, len(text), *(edge for span in spans for edge in span)})
    token_offset = {0: 0}
    pieces: list[int] = []
    for start, end in zip(edges, edges[1:], strict=False):
        pieces += tokenizer.encode(text[start:end])
        token_offset[end] = len(pieces)
    if pieces != tokenizer.encode(text):
        raise NoiseAurocError(f"attribute words of {text!r} do not fall on token boundaries")
    return [(token_offset[start], token_offset[end]) for start, end in spans]


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2, by the rank-sum (Mann-Whitney U) statistic.
    NaN when either group is empty."""
    if not len(positive) or not len(negative):
        return math.nan
    scores = np.concatenate([np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct value, ties averaged
    positive_rank_sum = mean_rank[inverse[: len(positive)]].sum()
    return float((positive_rank_sum - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def _read_json(path: Path) -> dict:
    try:
        return read_caption_file(path)
    except CaptionError as error:
        raise NoiseAurocError(str(error)) from None


def _read_noise_records(path: Path) -> dict[tuple[str, str], list[dict]]:
    if not path.is_file():
        raise NoiseAurocError(f"{NOISE_FILE} not found: {path} (the synthetic generator writes it)")
    records: dict[tuple[str, str], list[dict]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not record.keys() >= NOISE_RECORD_FIELDS:
            raise NoiseAurocError(
                f"{path}:{number} is not a noise record with {', '.join(sorted(NOISE_RECORD_FIELDS))}"
            )
        records.setdefault((record["file"], record["image"]), []).append(record)
    return records


def _wrong_spans(text: str, records: list[dict], where: str) -> dict[tuple[int, int], str]:
    spans = {}
    for record in records:
        start, end = record["char_start"], record["char_end"]
        if text[start:end] != record["wrong"]:
            raise NoiseAurocError(
                f"{NOISE_FILE} says {where} holds {record['wrong']!r} at {start}:{end}, the caption has {text[start:end]!r}"
            )
        spans[(start, end)] = record["attribute"]
    return spans


def select_captions(data_dir: Path, max_captions: int) -> tuple[list[CaptionToScore], int]:
    """Clean captions in (image, caption file) order, at most `max_captions`, and the number of dirty ones
    skipped on the way."""
    if not data_dir.is_dir():
        raise NoiseAurocError(f"data folder not found: {data_dir} (expected DIR/luperson_mllm from data.synthetic)")
    records = _read_noise_records(data_dir / NOISE_FILE)
    per_file = {name: _read_json(data_dir / name) for name in CAPTION_FILES}
    selected: list[CaptionToScore] = []
    dirty = 0
    for image in sorted(set().union(*per_file.values())):
        for name, captions in per_file.items():
            text = captions.get(image)
            if not isinstance(text, str):
                continue
            if DIRTY_CAPTION.search(text):
                dirty += 1
                continue
            wrong = _wrong_spans(text, records.get((name, image), []), f"{name}/{image}")
            selected.append(CaptionToScore(name, image, text, tuple(attribute_spans(text, wrong))))
            if len(selected) == max_captions:
                return selected, dirty
    return selected, dirty


def _load_images(paths: list[Path], image_size: tuple[int, int]) -> torch.Tensor:
    transform = eval_transform(image_size)
    images = []
    for path in paths:
        if not path.is_file():
            raise NoiseAurocError(f"image not found: {path}")
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    return torch.stack(images)  # (U, 3, H, W)


@torch.no_grad()
def token_noise(
    model: CLIPDualEncoder, ids: torch.Tensor, images: torch.Tensor, image_of_caption: torch.Tensor
) -> torch.Tensor:
    """r = 1 - max_j cos at the tap layer, as train_step scores T_full: ids (B, N), images (U, 3, H, W),
    image_of_caption (B,) index into images -> (B, N) float32 (0 at SOT, EOT and padding)."""
    _, patches = model.encode_image(images, return_tokens=True)  # (U, M, E)
    text_tokens = model.encode_text_tokens(ids, model.tap_layer)  # (B, N, E)
    valid = valid_token_mask(ids)
    similarity = token_patch_max_cosine(text_tokens, patches[image_of_caption], valid)  # (B, N)
    return (1.0 - similarity).masked_fill(~valid, 0.0)


def score_words(
    model: CLIPDualEncoder, captions: list[CaptionToScore], *, image_dir: Path, batch_size: int, device: torch.device
) -> tuple[list[WordNoise], int]:
    """Noise of every attribute word, and how many words fell beyond the context length (truncated away)."""
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    tokenizer = CaptionTokenizer(model.cfg.context_length)
    words: list[WordNoise] = []
    truncated = 0
    for start in range(0, len(captions), batch_size):
        batch = captions[start : start + batch_size]
        names = sorted({caption.image for caption in batch})
        images = _load_images([image_dir / name for name in names], model.cfg.image_size)
        image_of_caption = torch.tensor([names.index(caption.image) for caption in batch], device=device)
        ids = tokenizer([caption.text for caption in batch])  # (B, N)
        noise = token_noise(model, ids.to(device), images.to(device, dtype), image_of_caption).cpu()  # host sync
        eot_positions = ids.argmax(dim=1).tolist()
        for row, caption in enumerate(batch):
            spans = word_token_spans(tokenizer, caption.text, [(w.char_start, w.char_end) for w in caption.words])
            for word, (first, last) in zip(caption.words, spans, strict=True):
                if 1 + last > eot_positions[row]:  # +1: SOT comes first
                    truncated += 1
                    continue
                r = noise[row, 1 + first : 1 + last]
                words.append(WordNoise(word.attribute, word.wrong, float(r.max()), float(r.mean())))
    return words, truncated


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise_group(words: list[WordNoise]) -> dict:
    """Counts, AUROC (word noise as max and as mean over tokens) and mean noise of the wrong and correct words."""
    wrong = [w for w in words if w.wrong]
    correct = [w for w in words if not w.wrong]
    return {
        "wrong": len(wrong),
        "correct": len(correct),
        "auroc": {
            "max": _finite(auroc([w.noise_max for w in wrong], [w.noise_max for w in correct])),
            "mean": _finite(auroc([w.noise_mean for w in wrong], [w.noise_mean for w in correct])),
        },
        "mean_noise": {
            "wrong": {
                "max": _finite(_mean([w.noise_max for w in wrong])),
                "mean": _finite(_mean([w.noise_mean for w in wrong])),
            },
            "correct": {
                "max": _finite(_mean([w.noise_max for w in correct])),
                "mean": _finite(_mean([w.noise_mean for w in correct])),
            },
        },
    }


def format_table(title: str, rows: dict[str, dict]) -> str:
    def number(value: float | None) -> str:
        return "     -" if value is None else f"{value:6.3f}"

    lines = [title, f"{'attribute':<18}{'wrong':>7}{'correct':>9}  AUROC max  AUROC mean  r wrong  r correct"]
    for name, row in rows.items():
        noise = row["mean_noise"]
        lines.append(
            f"{name:<18}{row['wrong']:>7}{row['correct']:>9}     {number(row['auroc']['max'])}      "
            f"{number(row['auroc']['mean'])}   {number(noise['wrong']['max'])}     {number(noise['correct']['max'])}"
        )
    lines.append("(AUROC of the word noise taken as max / mean over its tokens; r: mean over words of that max)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.analysis.noise_auroc",
        description="AUROC of NAM's token noise r for wrong vs correct attribute words of the synthetic captions.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="a run folder, its checkpoints/ folder, one checkpoint folder, or a weights file"
    )
    source.add_argument("--config", help="score the model this config builds (its pretrained weights or random init)")
    parser.add_argument("--data", required=True, type=Path, help="DIR/luperson_mllm written by data.synthetic")
    parser.add_argument("--max-captions", type=positive_int, default=4000)
    parser.add_argument("--batch-size", type=positive_int, default=64, help="captions per forward")
    output_argument(parser, "--out", kind="file", help="also write the result as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--tap-layer", type=int, help="score at this layer instead of the model's tap layer (a layer sweep)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides with --config, e.g. model.pretrained=PATH")
    args = parser.parse_args(argv)
    if args.overrides and not args.config:
        parser.error("config overrides need --config")
    if args.max_captions < 1 or args.batch_size < 1:
        parser.error("--max-captions and --batch-size must be >= 1")
    return args


def build(args: argparse.Namespace) -> tuple[CLIPDualEncoder, str]:
    if args.checkpoint:
        model, tag_dir = load_exported_model(args.checkpoint)
        return model, str(tag_dir)
    config = load_config(args.config, args.overrides)
    torch.manual_seed(config.train.seed)
    return build_model(config.model, tap_layer=config.nam.tap_layer), describe_config_model(args.config, config)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        # before the scoring, not after it
        check_output_file(
            args.out,
            flag="--out",
            overwrite=args.overwrite,
            protect=[args.data, *([Path(args.config)] if args.config else [])],
        )
    try:
        captions, dirty = select_captions(args.data, args.max_captions)
        model, described = build(args)
        if args.tap_layer is not None:
            depth = min(model.cfg.vision_layers, model.cfg.text_layers)
            if not 1 <= args.tap_layer <= depth:
                raise NoiseAurocError(f"--tap-layer must be in [1, {depth}] for this model (got {args.tap_layer})")
            model.tap_layer = args.tap_layer
        start = time.perf_counter()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        words, truncated = score_words(
            model, captions, image_dir=args.data / IMAGE_DIR, batch_size=args.batch_size, device=device
        )
    except (NoiseAurocError, CheckpointError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    attributes = sorted({word.attribute for word in words})
    rows = {"all": summarise_group(words)} | {
        a: summarise_group([w for w in words if w.attribute == a]) for a in attributes
    }
    title = (
        f"noise AUROC at tap layer {model.tap_layer}, {described}: {len(captions)} captions "
        f"({dirty} dirty skipped), {truncated} words beyond the context length"
    )
    print(format_table(title, rows))
    if args.out:
        result = {
            "model": described,
            "data": str(args.data),
            "tap_layer": model.tap_layer,
            "captions": {"scored": len(captions), "dirty_skipped": dirty},
            "truncated_words": truncated,
            **rows["all"],
            "per_attribute": {a: rows[a] for a in attributes},
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_text_atomically(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
