"""IRRA's training-only heads for fine-tuning (docs/method.md): identity classification and cross-modal MLM.

As in IRRA (anosorae/IRRA, model/build.py):
- `IdentityClassifier` is one Linear(embed_dim, identities) applied to both v_cls and t_eos.
- `CrossModalMLM` lets the tokens of a BERT-masked caption attend to the image's last-layer tokens (one
  cross-attention, no residual), runs `depth` bidirectional CLIP blocks and a LayerNorm, then predicts the
  vocabulary with Linear -> QuickGELU -> LayerNorm -> Linear. Everything runs in the joint space (width
  embed_dim, one head per 64 channels), on the projected tokens of both encoders.

Pure torch: no deepspeed, no process groups. `engine.model.training_model` attaches the heads to the dual encoder.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from engine.config import mlm_heads


class QuickGELU(nn.Module):
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class IdentityClassifier(nn.Module):
    """(B, E) features of either modality -> (B, identities) logits; IRRA's init (std 0.001, zero bias)."""

    def __init__(self, embed_dim: int, identities: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(embed_dim, identities)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm transformer block with full (not causal) self-attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class CrossModalMLM(nn.Module):
    """Text tokens (B, N, W) attend to image tokens (B, 1 + M, W) -> vocabulary logits of the masked tokens."""

    def __init__(self, width: int, depth: int, vocab_size: int) -> None:
        super().__init__()
        heads = mlm_heads(width)
        if width % heads:
            raise ValueError(f"the MLM encoder's width {width} must be divisible by its {heads} heads")
        self.ln_pre_text = nn.LayerNorm(width)
        self.ln_pre_image = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        self.head = nn.Sequential(
            OrderedDict(
                dense=nn.Linear(width, width), gelu=QuickGELU(), ln=nn.LayerNorm(width), fc=nn.Linear(width, vocab_size)
            )
        )
        self._init_weights(width, depth)

    @torch.no_grad()
    def _init_weights(self, width: int, depth: int) -> None:
        """IRRA's init: attention inputs width^-0.5, outputs width^-0.5 (2 depth)^-0.5, MLP inputs (2 width)^-0.5.
        Biases start at zero (IRRA kept torch's default uniform draw for the Linear ones)."""
        attn_std = width**-0.5
        proj_std = attn_std * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        for attention in [self.cross_attn, *(block.attn for block in self.blocks)]:
            nn.init.normal_(attention.in_proj_weight, std=attn_std)
            nn.init.normal_(attention.out_proj.weight, std=proj_std)
        for block in self.blocks:
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.head.dense.weight, std=fc_std)
        nn.init.normal_(self.head.fc.weight, std=proj_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self, text_tokens: torch.Tensor, image_tokens: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """text_tokens (B, N, W), image_tokens (B, 1 + M, W) -> logits (B, N, V), or (K, V) for the K True entries
        of `positions` (B, N) in row-major order: the vocabulary projection then runs on the masked tokens only,
        instead of materialising (B, N, V) logits (64 x 77 x 49408 floats at IRRA's batch)."""
        image = self.ln_pre_image(image_tokens)
        hidden = self.cross_attn(self.ln_pre_text(text_tokens), image, image, need_weights=False)[0]  # (B, N, W)
        for block in self.blocks:
            hidden = block(hidden)
        hidden = self.ln_post(hidden)
        if positions is not None:
            hidden = hidden[positions]  # (K, W)
        return self.head(hidden)


__all__ = ["CrossModalMLM", "IdentityClassifier", "QuickGELU"]
