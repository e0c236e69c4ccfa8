"""Load real CLIP weights from a local path into `CLIPDualEncoder` (nothing is downloaded).

Three layouts are understood:
- a transformers CLIP directory (`CLIPModel.save_pretrained`: model.safetensors, pytorch_model.bin, or their
  sharded index), or one such weights file;
- OpenAI's `ViT-B-16.pt` (a TorchScript archive) or a plain state dict with OpenAI/open_clip key names, which are
  renamed to transformers' names (in_proj split into q/k/v, projections transposed);
- the authors' training checkpoints (MLLM4Text-ReID / IRRA, engine/model/irra_checkpoint.py): their `base_model.`
  weights are OpenAI-named, their heads are handed to the caller, optimizer and scheduler are not read.

Pickled files are read with `torch.load(weights_only=True)` only: a file holding any other object is refused, and
nothing in it runs. The vision position table is resampled (bilinearly as the reference does, or bicubically) from
the checkpoint's grid (14x14 for 224/16) to the model's (24x8 for 384x128), keeping the CLS row, and a longer text
position table is cut to the context length. Every failure is one `WeightsError` line naming the path.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import ConfigError, ModelConfig
from engine.model.clip import CLIPDualEncoder
from engine.model.irra_checkpoint import IrraCheckpoint, is_irra_checkpoint, split_irra_checkpoint

VISION_POSITIONS = "vision_model.embeddings.position_embedding.weight"
TEXT_POSITIONS = "text_model.embeddings.position_embedding.weight"
# Entries that are not weights: index buffers, TorchScript attributes of OpenAI's archive, open_clip's mask.
_IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|attn_mask|input_resolution|context_length|vocab_size)$")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_STATE_DICT = "OpenAI CLIP state dict"  # renamed to the transformers format's name when its keys say so


class WeightsError(ConfigError):
    """A checkpoint that cannot be loaded: the one-line message names the path and what was found."""


@dataclass
class PretrainedWeights:
    """A CLIP weights file, read and renamed to this model's names (nothing loaded yet)."""

    path: str
    state: dict[str, torch.Tensor]  # the dual encoder's tensors under transformers' CLIPModel names
    format: str  # what the file was recognised as
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # IRRA's heads, under DualEncoderWithHeads' names
    ignored: list[str] = field(default_factory=list)  # entries not read: optimizer, scheduler, epoch, unknown tensors
    resampled: list[str] = field(default_factory=list)  # filled by load_weights

    def describe(self, *, loaded_heads: list[str] | None = None) -> str:
        """One line: the format, what was loaded, what was ignored and what was resampled."""
        loaded = f"the dual encoder ({len(self.state)} tensors)"
        if loaded_heads:
            loaded += f" and heads: {', '.join(loaded_heads)}"
        elif self.heads:
            loaded += f" (its {len(self.heads)} head tensors not used here)"
        ignored = (
            ", ".join(self.ignored[:6]) + (", ..." if len(self.ignored) > 6 else "") if self.ignored else "nothing"
        )
        resampled = "; ".join(self.resampled) or "nothing"
        return f"{self.path}: {self.format}; loaded {loaded}; ignored {ignored}; resampled {resampled}"


def load_pretrained(
    model: CLIPDualEncoder, path: str, *, position_interpolation: str = "bilinear"
) -> PretrainedWeights:
    """Load the CLIP checkpoint at `path` into `model` in place (all parameters, strict); a square position table
    is resampled to the model's grid with `position_interpolation` (bilinear | bicubic). Returns what was read, with
    any IRRA heads for the caller (engine.model.training_model) to load."""
    weights = read_weights(path, model_keys=model.state_dict())
    load_weights(model, weights, position_interpolation=position_interpolation)
    return weights


def read_weights(path: str, *, model_keys: dict[str, torch.Tensor] | None = None) -> PretrainedWeights:
    """Read the weights at `path` and rename them to transformers' names. A transformers file's entries other than
    `model_keys` (default: the dual encoder's towers and projections) are left out and reported."""
    source = Path(path)
    if not source.exists():
        raise WeightsError(f"pretrained weights not found: {path}")
    state, kind, irra = _read_state_dict(source)
    heads, ignored = (irra.heads, irra.ignored + irra.unknown) if irra else ({}, [])
    if "visual.conv1.weight" in state:
        state = _openai_to_hf(state, path)
        state = {k: v for k, v in state.items() if not _IGNORED_KEYS.search(k)}
    elif "vision_model.embeddings.patch_embedding.weight" in state:
        kind = "transformers CLIP weights" if kind == _STATE_DICT else kind
        keep = model_keys if model_keys is not None else _hf_dual_encoder_keys(state)
        ignored = [k for k in state if k not in keep]  # a CLIPModel file may carry extra heads or buffers
        state = {k: v for k, v in state.items() if k in keep}
    else:
        keys = ", ".join(sorted(state)[:3]) or "no tensors"
        raise WeightsError(f"{path} is not a CLIP checkpoint (found keys: {keys})")
    return PretrainedWeights(path=str(path), state=state, format=kind, heads=heads, ignored=ignored)


def load_weights(model: CLIPDualEncoder, weights: PretrainedWeights, *, position_interpolation: str) -> None:
    """Fit the position tables, check every key and shape, then load strictly (casting into the model's dtype)."""
    state = dict(weights.state)
    state.setdefault("logit_scale", model.logit_scale)  # unused by SDM's fixed temperature; may be stripped
    weights.resampled = _fit_position_tables(state, model, weights.path, position_interpolation)
    _check_keys_and_shapes(state, model.state_dict(), weights.path)
    model.load_state_dict(state, strict=True)


def _hf_dual_encoder_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """A CLIPModel file's keys that the dual encoder has (its towers, projections and logit_scale)."""
    return {
        k
        for k in state
        if k.startswith(("vision_model.", "text_model.", "visual_projection.", "text_projection."))
        and not _IGNORED_KEYS.search(k)
    } | {"logit_scale"}


def model_config_from_weights(weights: PretrainedWeights) -> ModelConfig:
    """The ModelConfig whose model has exactly these tensors, as OpenAI's `build_model` derives it: widths, depths,
    patch, vocabulary and context from the shapes, one attention head per 64 channels. The image size comes from
    the vision position rows: a grid of (3w, w) patches (the 384x128 aspect), else a square one."""
    state, path = weights.state, weights.path
    try:
        patch = state["vision_model.embeddings.patch_embedding.weight"]  # (Dv, 3, P, P)
        tokens = state["text_model.embeddings.token_embedding.weight"]  # (V, Dt)
        positions = state[VISION_POSITIONS].shape[0] - 1
        values = dict(
            patch_size=patch.shape[-1],
            vision_width=patch.shape[0],
            vision_layers=_count_layers(state, "vision_model"),
            text_width=tokens.shape[1],
            text_layers=_count_layers(state, "text_model"),
            embed_dim=state["text_projection.weight"].shape[0],
            context_length=state[TEXT_POSITIONS].shape[0],
            vocab_size=tokens.shape[0],
        )
    except KeyError as error:
        raise WeightsError(f"{path} lacks {error.args[0]}, so its model's shape cannot be derived") from None
    values["vision_heads"] = max(1, values["vision_width"] // 64)
    values["text_heads"] = max(1, values["text_width"] // 64)
    values["image_size"] = _image_size(positions, values["patch_size"], path)
    return ModelConfig(**values)


def _count_layers(state: dict[str, torch.Tensor], tower: str) -> int:
    pattern = re.compile(rf"^{tower}\.encoder\.layers\.(\d+)\.")
    return 1 + max((int(m[1]) for k in state if (m := pattern.match(k))), default=-1)


def _image_size(positions: int, patch: int, path: str) -> tuple[int, int]:
    width = math.isqrt(positions // 3)
    if 3 * width * width == positions and width:
        return 3 * width * patch, width * patch
    side = math.isqrt(positions)
    if side * side == positions and side:
        return side * patch, side * patch
    raise WeightsError(
        f"{path}: the vision position table has {positions} patch rows, neither a (3w, w) grid like 24x8 nor a "
        "square one, so the image size cannot be derived"
    )


def _read_state_dict(source: Path) -> tuple[dict[str, torch.Tensor], str, IrraCheckpoint | None]:
    """Tensors by name from a transformers directory, a safetensors file, a TorchScript archive, a state dict or an
    authors' training checkpoint, with the format's name (and the sorted checkpoint for the last)."""
    if source.is_dir():
        return _read_hf_directory(source), "transformers CLIP folder", None
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(source), device="cpu"), "safetensors file", None
        if _is_torchscript(source):
            state = dict(torch.jit.load(str(source), map_location="cpu").state_dict())
            return state, "OpenAI CLIP TorchScript archive", None
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))  # the class or function named, e.g. posix.system
        if refused is None:  # not a pickle at all
            raise WeightsError(f"{source} is not a CLIP checkpoint (unrecognised format: not a pickle)") from None
        raise WeightsError(
            f"{source} was refused: it holds pickled objects other than tensors and plain containers, which are "
            f"never run (found {refused[1]})"
        ) from None
    except Exception as error:  # any unreadable file is a user mistake, reported in one line
        raise WeightsError(
            f"{source} is not a CLIP checkpoint (unrecognised format: not a safetensors file, TorchScript archive "
            f"or tensor state dict readable with weights_only=True; {type(error).__name__})"
        ) from None
    if is_irra_checkpoint(state):
        irra = split_irra_checkpoint(state)
        return irra.clip, irra.describe(), irra
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # training-checkpoint wrapper
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{source} is not a CLIP checkpoint (expected a dict of tensors, found {type(state).__name__})"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}, _STATE_DICT, None  # DataParallel / DDP prefix


def _read_hf_directory(directory: Path) -> dict[str, torch.Tensor]:
    for name in _HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return _read_state_dict(directory / name)[0]
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
                state.update(_read_state_dict(directory / shard)[0])
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


def _fit_position_tables(state: dict[str, torch.Tensor], model: CLIPDualEncoder, path: str, mode: str) -> list[str]:
    """Resample the vision table to the model's patch grid and cut the text table to its context length; returns
    what was changed, e.g. ['vision positions 14x14 -> 24x8 (bilinear)']."""
    changed = []
    grid_h, grid_w = model.vision_model.embeddings.grid
    vision = state.get(VISION_POSITIONS)
    if vision is not None and vision.ndim == 2 and vision.shape[0] != grid_h * grid_w + 1:
        patches = vision.shape[0] - 1
        side, narrow = math.isqrt(patches), math.isqrt(patches // 3)
        if side * side == patches:
            source = (side, side)
        elif 3 * narrow * narrow == patches and narrow:  # an authors' table at the training grid, e.g. 24x8
            source = (3 * narrow, narrow)
        else:
            raise WeightsError(
                f"{path}: {VISION_POSITIONS} has {patches} patch rows, neither a square or (3w, w) grid nor the "
                f"model's {grid_h}x{grid_w}"
            )
        state[VISION_POSITIONS] = resample_position_table(vision, source, (grid_h, grid_w), mode=mode)
        changed.append(f"vision positions {source[0]}x{source[1]} -> {grid_h}x{grid_w} ({mode})")
    context_length = model.text_model.embeddings.position_embedding.num_embeddings
    text = state.get(TEXT_POSITIONS)
    if text is not None and text.ndim == 2 and text.shape[0] > context_length:
        state[TEXT_POSITIONS] = text[:context_length]
        changed.append(f"text positions cut {text.shape[0]} -> {context_length}")
    return changed


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
