"""The blocks of CLIP's two towers, owned here so that the model does not depend on transformers' internals.

Module and parameter names equal those of transformers' `CLIPModel` (`vision_model.pre_layrnorm`,
`*.encoder.layers.{i}.self_attn.q_proj`, `text_model.final_layer_norm`, ...), so its state dicts load as they are,
OpenAI's names map onto them (weights.py) and a model exports back to a `CLIPModel` folder (eval/export.py). The
modules are also registered in `CLIPModel`'s order (k_proj before v_proj before q_proj, as transformers does):
parameter order fixes the layout of DeepSpeed's flat optimizer partitions in checkpoints, and construction order
fixes which random numbers a seed gives each weight before `CLIPDualEncoder._init_weights` redraws them.

Each block computes what transformers' block of the same name computes for CLIP (pre-norm residual blocks,
quick_gelu MLP, SDPA attention with an additive mask and no dropout); tests/test_clip_blocks.py checks the
features against a `CLIPModel` with the same weights. One block differs on purpose: the vision embeddings hold
one position row per patch of the model's rectangular grid (24x8 at 384x128), added directly, instead of a square
table re-interpolated on every forward.

Pure: no transformers, no deepspeed, no process groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class TowerConfig:
    """The shape of one tower. Field names are transformers' CLIP config keys, so `to_dict()` is a valid
    `CLIPVisionConfig` / `CLIPTextConfig` for the export."""

    hidden_size: int  # width D
    intermediate_size: int  # MLP width, 4 * D in CLIP
    num_hidden_layers: int
    num_attention_heads: int
    projection_dim: int  # joint embedding width E (the projections live on the dual encoder)
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )

    def to_dict(self) -> dict:
        # quick_gelu: the only activation CLIPMLP computes; no dropout anywhere (CLIP trains without it).
        return dataclasses.asdict(self) | {"hidden_act": "quick_gelu", "attention_dropout": 0.0, "dropout": 0.0}


@dataclass(frozen=True, kw_only=True)
class VisionTowerConfig(TowerConfig):
    patch_size: int
    image_size: int  # side of the square table transformers would build; only the export reads it (overriding it)
    num_channels: int = 3


@dataclass(frozen=True, kw_only=True)
class TextTowerConfig(TowerConfig):
    vocab_size: int
    max_position_embeddings: int  # the context length N


class CLIPAttention(nn.Module):
    """Multi-head self-attention: q/k/v projections, scaled dot product per head (scale head_dim^-1/2), out_proj."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        # Registration order as transformers' (k, v, q): see the module docstring.
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); `attention_mask` is additive, broadcastable to (B, nh, N, N)."""
        batch, length, _ = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hs)

        q, k, v = (
            heads(self.q_proj(hidden_states)),
            heads(self.k_proj(hidden_states)),
            heads(self.v_proj(hidden_states)),
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scale)  # (B, nh, N, hs)
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)  # (B, N, D)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """fc1 -> quick_gelu (x * sigmoid(1.702 x), OpenAI CLIP's activation) -> fc2."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(hidden_states)  # (B, N, 4D)
        return self.fc2(hidden * torch.sigmoid(1.702 * hidden))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:
        """(B, N, D) -> a 1-tuple of (B, N, D). Both masks are additive and summed, and the 1-tuple is returned:
        transformers' `CLIPEncoderLayer` convention, kept so that `layer(hidden, None, mask)[0]` callers
        (clip.py, engine/method/token_alignment.py) read the same."""
        if causal_attention_mask is not None:
            attention_mask = causal_attention_mask if attention_mask is None else attention_mask + causal_attention_mask
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attention_mask)
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return (hidden_states,)


class CLIPEncoder(nn.Module):
    """The stack of blocks; the dual encoder runs them itself (to tap a layer and to stop early)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus a learned absolute position table."""

    def __init__(self, config: TextTowerConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) ids -> (B, N, D)."""
        length, positions = input_ids.shape[-1], self.position_embedding.num_embeddings
        if length > positions:
            raise ValueError(f"a caption of {length} tokens is longer than the model's context of {positions}")
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class RectangularVisionEmbeddings(nn.Module):
    """Patch + class embeddings with a (grid_h * grid_w + 1, D) position table, added as it is. CLIP's own
    (`CLIPVisionEmbeddings`) holds a square table and re-interpolates it on every forward for a non-square image;
    the names (class_embedding, patch_embedding, position_embedding) are the same, so its weights load once the
    table is resampled (weights.py)."""

    def __init__(self, config: VisionTowerConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid  # (rows, cols) of patches
        self.patch_size = config.patch_size
        self.embed_dim = config.hidden_size
        self.class_embedding = nn.Parameter(torch.empty(self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(grid[0] * grid[1] + 1, self.embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        if (height // self.patch_size, width // self.patch_size) != self.grid:
            rows, cols = self.grid
            raise ValueError(
                f"image size {height}x{width} does not match the model's {rows * self.patch_size}x{cols * self.patch_size}"
            )
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype))  # (B, D, gh, gw)
        patches = patches.flatten(2).transpose(1, 2)  # (B, M, D), row-major over the grid
        cls = self.class_embedding.to(patches.dtype).expand(batch, 1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # (B, 1 + M, D)


class CLIPVisionTransformer(nn.Module):
    """embeddings (rectangular) -> pre_layrnorm (transformers' spelling) -> encoder; post_layernorm is applied by
    the caller to the tokens it reads."""

    def __init__(self, config: VisionTowerConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        self.register_module("embeddings", None)  # first, as in CLIPModel's parameter order; built last (see below)
        _draw_like_square_vision_embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embeddings = RectangularVisionEmbeddings(config, grid)


class CLIPTextTransformer(nn.Module):
    """embeddings -> encoder (causal) -> final_layer_norm, applied by the caller to the tokens it reads."""

    def __init__(self, config: TextTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


def causal_mask(length: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, N, N) mask: token i attends to tokens <= i, as in CLIP's text encoder (the dtype's minimum
    rather than -inf, as transformers builds it, so that fp16/bf16 rows stay finite)."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return mask.triu(1)[None, None]


def _draw_like_square_vision_embeddings(config: VisionTowerConfig) -> None:
    """Make the random draws of transformers' `CLIPVisionEmbeddings` (class vector, patch conv, square position
    table) that this tower made, and threw away for the rectangular table built after the encoder, when it was
    transformers' class. Every value is redrawn by
    `_init_weights`, but from a generator that these draws advanced: skipping them would give each seed other
    initial weights than it gave before (and other numbers than the README's demo)."""
    side = config.image_size // config.patch_size
    torch.randn(config.hidden_size)
    nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False)
    nn.Embedding(side * side + 1, config.hidden_size)
