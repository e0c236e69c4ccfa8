"""Export a trained dual encoder as a transformers CLIP folder that `CLIPModel.from_pretrained` loads as is.

python -m eval export --checkpoint RUN_DIR|CHECKPOINT_DIR|WEIGHTS_FILE --out DIR [--overwrite]

DIR must be new or empty (with --overwrite, a previous export is replaced) and never a folder that holds a
checkpoint or the checkpoint read; the folder is written beside DIR and renamed into place when complete.

The folder holds config.json + model.safetensors (`CLIPModel`), the tokenizer files (`CLIPTokenizer`, with
`<|mask|>` at 49405) and a preprocessor_config.json that resizes to the training size (384x128).

transformers' `CLIPVisionEmbeddings` only knows square grids ((image_size / patch)^2 + 1 positions; an (H, W)
image_size fails in its `//`), and 24x8 = 192 is not a square. The export therefore stores an s x s table
(s = 24 at 384x128, so config.json says image_size 384) that transformers' own `interpolate_pos_encoding`
resamples back to exactly our 24x8 table: bicubic with align_corners=False from s to g samples source
position k * i + (k - 1) / 2 for k = s / g, an integer position when k is odd, where the cubic weights are
(0, 1, 0, 0). So each of our rows repeated k times along both axes comes back bit for bit. A grid whose two
sides have different powers of two (say 4x2) has no such s; there the table is the least-squares solution of
the interpolation, exact to float32 rounding (~1e-7). Use it as

    model.get_image_features(pixel_values=images, interpolate_pos_encoding=True)  # images (B, 3, 384, 128)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
from transformers import CLIPTokenizer as HFCLIPTokenizer

from data.cli_errors import error_boundary
from data.outputs import atomic_folder, check_output_folder, output_argument
from data.tokenizer import EOT_ID, MASK_ID, SOT_ID, CaptionTokenizer
from data.transforms import CLIP_MEAN, CLIP_STD
from engine.model import CLIPDualEncoder
from engine.model.weights import VISION_POSITIONS
from engine.runtime.checkpoint import CheckpointError, load_exported_model

_BILINEAR = 2  # PIL.Image.BILINEAR, as data.transforms resizes by default

TOOL = "python -m eval export"


def square_side(grid: tuple[int, int]) -> int | None:
    """Smallest s that is an odd multiple of both grid sides (exact resampling), or None if there is none."""
    rows, cols = grid
    side = math.lcm(rows, cols)
    return side if (side // rows) % 2 and (side // cols) % 2 else None


def _bicubic_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source) float64 matrix of torch's 1-D bicubic resize (align_corners=False), as HF calls it."""
    basis = torch.eye(source, dtype=torch.float64)[:, None, :, None]  # (source, 1, source, 1)
    resized = F.interpolate(basis, size=(target, 1), mode="bicubic", align_corners=False)  # (source, 1, target, 1)
    return resized[:, 0, :, 0].t()


def square_position_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + rows * cols, D) rectangular table -> (1 + s * s, D) square table that transformers'
    `interpolate_pos_encoding` turns back into `table` at a (rows * patch, cols * patch) image."""
    rows, cols = grid
    cls, patches = table[:1], table[1:].reshape(rows, cols, -1)  # (1, D), (rows, cols, D)
    side = square_side(grid)
    if side is not None:
        square = patches.repeat_interleave(side // rows, dim=0).repeat_interleave(side // cols, dim=1)
    else:  # least squares: solve R @ X @ C^T = patches for the s x s table X
        side = max(rows, cols)
        row_map, col_map = _bicubic_matrix(side, rows), _bicubic_matrix(side, cols)  # (rows, s), (cols, s)
        solved = torch.einsum(
            "ar,rcd,bc->abd", torch.linalg.pinv(row_map), patches.double(), torch.linalg.pinv(col_map)
        )
        square = solved.to(table.dtype)  # (s, s, D)
    return torch.cat([cls, square.reshape(side * side, -1)])


def _hf_config(model: CLIPDualEncoder, side: int) -> CLIPConfig:
    vision = model.vision_model.config.to_dict() | {"image_size": side * model.cfg.patch_size}
    text = model.text_model.config.to_dict() | {"bos_token_id": SOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=model.cfg.embed_dim)


def _save_tokenizer(out_dir: Path, context_length: int) -> None:
    """vocab.json and merges.txt of data.tokenizer (last merge dropped, `<|mask|>` at 49405) via HF's class.

    Padding is `<|endoftext|>` as in HF's CLIP (ours pads with 0): the causal text tower never looks past the
    first EOT, so features agree. "!" (id 0) cannot be the pad token: HF would split it out of every caption."""
    ours = CaptionTokenizer(context_length=context_length)
    vocab = ours.encoder | {"<|mask|>": MASK_ID, "<|startoftext|>": SOT_ID, "<|endoftext|>": EOT_ID}
    merges = sorted(ours.bpe_ranks, key=ours.bpe_ranks.get)
    with tempfile.TemporaryDirectory() as staging:
        vocab_file, merges_file = Path(staging) / "vocab.json", Path(staging) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        tokenizer = HFCLIPTokenizer(
            str(vocab_file), str(merges_file), mask_token="<|mask|>", model_max_length=context_length
        )
    tokenizer.save_pretrained(out_dir)


def export_transformers(model: CLIPDualEncoder, out_dir: Path) -> None:
    """Write `model` as a transformers CLIP folder (config, fp32 safetensors, tokenizer, image processor)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = model.cfg.grid
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    state[VISION_POSITIONS] = square_position_table(state[VISION_POSITIONS], grid)
    side = math.isqrt(state[VISION_POSITIONS].shape[0] - 1)
    hf_model = CLIPModel(_hf_config(model, side))
    hf_model.load_state_dict(state, strict=True)  # names and shapes must match CLIPModel's exactly
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    _save_tokenizer(out_dir, model.cfg.context_length)
    height, width = model.cfg.image_size
    CLIPImageProcessor(
        size={"height": height, "width": width},
        do_center_crop=False,
        resample=_BILINEAR,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="a run folder, its checkpoints/ folder, one checkpoint, or a weights file"
    )
    output_argument(
        parser, "--out", kind="folder", required=True, help="folder to write the transformers CLIP model into"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out (never in place)")


def run(args: argparse.Namespace) -> int:
    source = Path(args.checkpoint)
    check_output_folder(args.out, flag="--out", overwrite=args.overwrite, protect=[source], tool=TOOL)
    try:
        model, tag_dir = load_exported_model(args.checkpoint)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    check_output_folder(args.out, flag="--out", overwrite=args.overwrite, protect=[source, tag_dir], tool=TOOL)
    with atomic_folder(args.out, tool=TOOL) as partial:
        export_transformers(model, partial)
    height, width = model.cfg.image_size
    print(
        f"wrote {args.out} from {tag_dir}; load with CLIPModel.from_pretrained and call get_image_features on "
        f"{height}x{width} images with interpolate_pos_encoding=True"
    )
    return 0


@error_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval export", description="Write a checkpoint as a transformers CLIP folder."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
