"""Load real CLIP weights from a local path into `CLIPDualEncoder` (nothing is downloaded).

Two layouts are understood:
- a transformers CLIP directory (`CLIPModel.save_pretrained`: model.safetensors, pytorch_model.bin, or their
  sharded index), or one such weights file;
- OpenAI's `ViT-B-16.pt` (a TorchScript archive) or a plain state dict with OpenAI/open_clip key names, which are
  renamed to transformers' names (in_proj split into q/k/v, projections transposed).

Either way the vision position table is resampled (bilinearly as the reference does, or bicubically) from the
checkpoint's square grid (14x14 for 224/16) to the model's grid (24x8 for 384x128), keeping the CLS row, and a longer text position table is cut to
the context length. Every failure is one `WeightsError` line naming the path.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import ConfigError
from engine.model.clip import CLIPDualEncoder

VISION_POSITIONS = "vision_model.embeddings.position_embedding.weight"
TEXT_POSITIONS = "text_model.embeddings.position_embedding.weight"
# Entries that are not weights: index buffers, TorchScript attributes of OpenAI's archive, open_clip's mask.
_IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|attn_mask|input_resolution|context_length|vocab_size)$")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class WeightsError(ConfigError):
    """A checkpoint that cannot be loaded: the one-line message names the path and what was found."""


def load_pretrained(model: CLIPDualEncoder, path: str, *, position_interpolation: str = "bilinear") -> None:
    """Load the CLIP checkpoint at `path` into `model` in place (all parameters, strict); a square position table
    is resampled to the model's grid with `position_interpolation` (bilinear | bicubic)."""
    source = Path(path)
    if not source.exists():
        raise WeightsError(f"pretrained weights not found: {path}")
    state = _read_state_dict(source)
    if "visual.conv1.weight" in state:
        state = _openai_to_hf(state, path)
        state = {k: v for k, v in state.items() if not _IGNORED_KEYS.search(k)}
    elif "vision_model.embeddings.patch_embedding.weight" in state:
        ours = model.state_dict()
        state = {k: v for k, v in state.items() if k in ours}  # a CLIPModel file may carry extra heads or buffers
    else:
        keys = ", ".join(sorted(state)[:3]) or "no tensors"
        raise WeightsError(f"{path} is not a CLIP checkpoint (found keys: {keys})")
    state.setdefault("logit_scale", model.logit_scale)  # unused by SDM's fixed temperature; may be stripped
    _fit_position_tables(state, model, path, position_interpolation)
    _check_keys_and_shapes(state, model.state_dict(), path)
    model.load_state_dict(state, strict=True)


def _read_state_dict(source: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a transformers directory, a safetensors file, a TorchScript archive or a state dict."""
    if source.is_dir():
        return _read_hf_directory(source)
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(source), device="cpu")
        if _is_torchscript(source):
            return dict(torch.jit.load(str(source), map_location="cpu").state_dict())
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is a user mistake, reported in one line
        raise WeightsError(
            f"{source} is not a CLIP checkpoint (unrecognised format: not a safetensors file, TorchScript archive "
            f"or tensor state dict readable with weights_only=True; {type(error).__name__})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # training-checkpoint wrapper
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{source} is not a CLIP checkpoint (expected a dict of tensors, found {type(state).__name__})"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel / DDP prefix


def _read_hf_directory(directory: Path) -> dict[str, torch.Tensor]:
    for name in _HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return _read_state_dict(directory / name)
    for name in _HF_INDEX_FILES:
        index = directory / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                if not all(isinstance(shard, str) for shard in shards):
                    raise TypeError("shard names must be strings")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
                raise WeightsError(
                    f"{index} is malformed: expected a JSON object whose weight_map maps names to shard files "
                    f"({type(error).__name__}: {error})"
                ) from None
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (directory / shard).is_file():
                    raise WeightsError(f"{index} names the shard {shard}, which is not in {directory}")
                state.update(_read_state_dict(directory / shard))
            return state
    raise WeightsError(f"{directory} is not a CLIP checkpoint directory (no {' or '.join(_HF_WEIGHT_FILES)})")


def _is_torchscript(source: Path) -> bool:
    """TorchScript archives are zip files with a code/ folder; torch.load(weights_only=True) refuses them."""
    if not zipfile.is_zipfile(source):
        return False
    with zipfile.ZipFile(source) as archive:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


def _openai_to_hf(state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Rename OpenAI CLIP keys to transformers' `CLIPModel` keys; unknown keys pass through to be reported."""
    renames = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": VISION_POSITIONS,
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": TEXT_POSITIONS,
        "logit_scale": "logit_scale",
    }
    norms = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm"}
    norms["ln_final"] = "text_model.final_layer_norm"
    block_parts = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    block = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    in_proj = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in renames:
            out[renames[key]] = value
        elif key in ("visual.proj", "text_projection"):  # OpenAI stores (width, E); nn.Linear wants (E, width)
            out["visual_projection.weight" if key == "visual.proj" else "text_projection.weight"] = value.t()
        elif (norm := key.rpartition(".")[0]) in norms:
            out[f"{norms[norm]}.{key.rpartition('.')[2]}"] = value
        elif match := in_proj.match(key):
            tower = "vision_model" if match[1] else "text_model"
            prefix = f"{tower}.encoder.layers.{match[2]}.self_attn"
            if value.shape[0] % 3:
                raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)}, not three stacked q/k/v blocks")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{name}.{match[3]}"] = part
        elif (match := block.match(key)) and match[3] in block_parts:
            tower = "vision_model" if match[1] else "text_model"
            out[f"{tower}.encoder.layers.{match[2]}.{block_parts[match[3]]}.{match[4]}"] = value
        else:
            out[key] = value
    return out


def _fit_position_tables(state: dict[str, torch.Tensor], model: CLIPDualEncoder, path: str, mode: str) -> None:
    """Resample the vision table to the model's patch grid and cut the text table to its context length."""
    grid_h, grid_w = model.vision_model.embeddings.grid
    vision = state.get(VISION_POSITIONS)
    if vision is not None and vision.ndim == 2 and vision.shape[0] != grid_h * grid_w + 1:
        side = math.isqrt(vision.shape[0] - 1)
        if side * side != vision.shape[0] - 1:
            raise WeightsError(
                f"{path}: {VISION_POSITIONS} has {vision.shape[0] - 1} patch rows, neither a square grid nor the "
                f"model's {grid_h}x{grid_w}"
            )
        state[VISION_POSITIONS] = resample_position_table(vision, (side, side), (grid_h, grid_w), mode=mode)
    context_length = model.text_model.embeddings.position_embedding.num_embeddings
    text = state.get(TEXT_POSITIONS)
    if text is not None and text.ndim == 2 and text.shape[0] > context_length:
        state[TEXT_POSITIONS] = text[:context_length]


def resample_position_table(
    table: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int], *, mode: str = "bilinear"
) -> torch.Tensor:
    """(1 + h*w, D) -> (1 + H*W, D) float32: `mode` (bilinear, the reference's choice, or bicubic) over the patch
    grid, align_corners=False; the CLS row is kept as is. The result stays float32 (OpenAI's archive is fp16) and is
    cast by load_state_dict into the model's dtype."""
    cls, patches = table[:1], table[1:]  # (1, D), (h*w, D)
    grid = patches.float().reshape(1, *source_grid, -1).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=target_grid, mode=mode, align_corners=False)  # (1, D, H, W)
    patches = grid.permute(0, 2, 3, 1).reshape(target_grid[0] * target_grid[1], -1)  # (H*W, D), row-major
    return torch.cat([cls.float(), patches], dim=0)


def _check_keys_and_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: str) -> None:
    """Shapes first (in the model's order), since a wrong architecture is the likeliest mistake, then key sets."""
    for key, target in expected.items():
        if key in state and state[key].shape != target.shape:
            raise WeightsError(
                f"{path}: shape mismatch at {key}: the model expects {tuple(target.shape)}, the checkpoint has "
                f"{tuple(state[key].shape)} (does the model config match the checkpoint's architecture?)"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = [
        f"{label} {len(keys)} keys ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for label, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    if problems:
        raise WeightsError(f"{path} does not match the model: {'; '.join(problems)}")
