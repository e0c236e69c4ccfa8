"""CLIP ViT-B/16 dual encoder with a layer-l tap for noise-aware masking (docs/method.md).

The towers are built from blocks.py, whose module and parameter names equal transformers' `CLIPModel`'s, so HF
state dicts load as they are (transformers itself is not imported). Two things differ from `CLIPModel`:
- the vision embedding holds one position row per patch of a rectangular grid (24x8 at 384x128), added
  directly instead of re-interpolating a square table on every forward;
- the encoders run their blocks here, not through an encoder's forward, so that the tokens after block
  `tap_layer` can be read in the same pass, and the text encoder can stop after `tap_layer` blocks to score the
  unmasked caption (the reference runs both captions through those blocks together and only the masked one
  above: the same scores and compute).

This module is pure: no deepspeed, no process groups. The engine wraps it.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ConfigError, ModelConfig
from engine.model.blocks import (
    CLIPMLP,
    CLIPAttention,
    CLIPTextTransformer,
    CLIPVisionTransformer,
    RectangularVisionEmbeddings,
    TextTowerConfig,
    VisionTowerConfig,
    causal_mask,
)


def tower_configs(cfg: ModelConfig) -> tuple[VisionTowerConfig, TextTowerConfig]:
    common = {"layer_norm_eps": 1e-5, "projection_dim": cfg.embed_dim}
    vision = VisionTowerConfig(
        hidden_size=cfg.vision_width,
        intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size[0],  # a square side for the export; the rectangular grid is cfg.grid
        patch_size=cfg.patch_size,
        **common,
    )
    text = TextTowerConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.text_width,
        intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.context_length,
        **common,
    )
    return vision, text


class CLIPDualEncoder(nn.Module):
    """Image and text towers projecting to a shared space, with tokens read after block `tap_layer`.

    Global features (docs/method.md): `v_cls` = last-layer CLS -> post_layernorm -> visual_projection and
    `t_eos` = last-layer token at argmax(ids) -> final_layer_norm -> text_projection. Tap tokens pass through the
    same norm and projection so image patches and text tokens share the joint space for NAM's scoring; they are
    detached because the scorer only reads them.
    """

    def __init__(self, cfg: ModelConfig, tap_layer: int = 10) -> None:
        super().__init__()
        if not 1 <= tap_layer <= min(cfg.vision_layers, cfg.text_layers):
            raise ConfigError(
                f"tap_layer must be in [1, {min(cfg.vision_layers, cfg.text_layers)}] for a model with "
                f"{cfg.vision_layers} vision and {cfg.text_layers} text layers (got {tap_layer})"
            )
        self.cfg = cfg
        self.tap_layer = tap_layer
        vision_config, text_config = tower_configs(cfg)
        self.vision_model = CLIPVisionTransformer(vision_config, cfg.grid)
        self.text_model = CLIPTextTransformer(text_config)
        self.visual_projection = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        # Kept only so CLIP checkpoints round-trip; SDM uses a fixed temperature, so it is a buffer, not trained.
        self.register_buffer("logit_scale", torch.tensor(2.6592))  # ln(1 / 0.07), CLIP's initial value
        self.apply(self._init_weights)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """CLIP's initialisation as transformers does it (initializer_factor 1, initializer_range 0.02)."""
        if isinstance(module, RectangularVisionEmbeddings):
            nn.init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            nn.init.normal_(module.patch_embedding.weight, std=0.02)
            nn.init.normal_(module.position_embedding.weight, std=0.02)
        elif isinstance(module, CLIPAttention):
            in_std = module.embed_dim**-0.5 * (2 * module.config.num_hidden_layers) ** -0.5
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                nn.init.normal_(proj.weight, std=in_std)
            nn.init.normal_(module.out_proj.weight, std=module.embed_dim**-0.5)
        elif isinstance(module, CLIPMLP):
            width = module.config.hidden_size
            nn.init.normal_(module.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(module.fc2.weight, std=width**-0.5 * (2 * module.config.num_hidden_layers) ** -0.5)
        elif isinstance(module, nn.Embedding):  # text token and position tables
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if module is self:
            nn.init.normal_(self.visual_projection.weight, std=self.cfg.vision_width**-0.5)
            nn.init.normal_(self.text_projection.weight, std=self.cfg.text_width**-0.5)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode_image(
        self, images: torch.Tensor, return_tokens: bool = False, *, all_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> v_cls (B, E); with `all_tokens` the whole projected last layer (B, 1 + M, E) instead,
        whose row 0 is v_cls (IRRA's MLM attends to it); with `return_tokens` also the tap layer's patch tokens
        (B, M, E)."""
        vision = self.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(images))  # (B, 1 + M, Dv)
        tokens = None
        for depth, layer in enumerate(vision.encoder.layers, start=1):
            hidden = layer(hidden)[0]
            if return_tokens and depth == self.tap_layer:
                with torch.no_grad():
                    tokens = self.visual_projection(vision.post_layernorm(hidden[:, 1:]))  # (B, M, E), CLS dropped
        features = self.visual_projection(vision.post_layernorm(hidden if all_tokens else hidden[:, 0]))
        return (features, tokens) if return_tokens else features  # features: (B, E), or (B, 1 + M, E)

    def _text_hidden(
        self, ids: torch.Tensor, n_layers: int, *, tap: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the first `n_layers` causal blocks; also return the hidden state after block `tap` if asked."""
        text = self.text_model
        if not 1 <= n_layers <= len(text.encoder.layers):
            raise ValueError(f"n_layers must be in [1, {len(text.encoder.layers)}] (got {n_layers})")
        hidden = text.embeddings(ids)  # (B, N, Dt)
        mask = causal_mask(ids.shape[1], dtype=hidden.dtype, device=hidden.device)  # (1, 1, N, N)
        tapped = None
        for depth, layer in enumerate(text.encoder.layers[:n_layers], start=1):
            hidden = layer(hidden, None, mask)[0]
            if depth == tap:
                tapped = hidden
        return hidden, tapped

    def _project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_model.final_layer_norm(hidden))

    def encode_text(
        self, ids: torch.Tensor, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, N) ids -> t_eos (B, E) pooled at argmax(ids) (EOT has the largest id); with `return_tokens` also
        the tap layer's tokens (B, N, E), detached."""
        hidden, tapped = self._text_hidden(ids, len(self.text_model.encoder.layers), tap=self.tap_layer)
        eot = ids.argmax(dim=-1)  # (B,)
        t_eos = self._project_text(hidden[torch.arange(ids.shape[0], device=hidden.device), eot])  # (B, E)
        if not return_tokens:
            return t_eos
        with torch.no_grad():
            tokens = self._project_text(tapped)  # (B, N, E)
        return t_eos, tokens

    def encode_text_tokens(self, ids: torch.Tensor, n_layers: int) -> torch.Tensor:
        """(B, N) ids -> (B, N, E) after only `n_layers` blocks: scores the unmasked caption at the tap, which
        needs no block above it. The caller picks the grad mode (forward uses no_grad)."""
        hidden, _ = self._text_hidden(ids, n_layers)
        return self._project_text(hidden)

    def forward(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        score_ids: torch.Tensor | None = None,
        *,
        image_sequence: bool = False,
        text_sequence: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One training step's model work. `text_ids` is the (masked) caption whose t_eos enters the loss;
        `score_ids`, when given, is the unmasked caption whose tap tokens NAM scores against the patches.
        `image_sequence` / `text_sequence` also return every projected last-layer token of that tower, with
        gradient, for IRRA's MLM; row 0 / the EOT row are then v_cls / t_eos."""
        if score_ids is None and not image_sequence and not text_sequence:
            return {"image_feats": self.encode_image(images), "text_feats": self.encode_text(text_ids)}
        if score_ids is None:
            image_out, image_tokens = self.encode_image(images, all_tokens=image_sequence), None
        else:
            image_out, image_tokens = self.encode_image(images, return_tokens=True, all_tokens=image_sequence)
        out = {"image_feats": image_out[:, 0] if image_sequence else image_out}  # (B, E)
        if image_sequence:
            out["image_sequence"] = image_out  # (B, 1 + M, E)
        if text_sequence:
            text_out = self.encode_text_tokens(text_ids, len(self.text_model.encoder.layers))  # (B, N, E)
            out["text_sequence"] = text_out
            out["text_feats"] = text_out[torch.arange(text_ids.shape[0], device=text_out.device), text_ids.argmax(-1)]
        else:
            out["text_feats"] = self.encode_text(text_ids)  # (B, E)
        if score_ids is not None:
            with torch.no_grad():
                out["score_tokens"] = self.encode_text_tokens(score_ids, self.tap_layer)  # (B, N, E), detached
            out["image_tokens"] = image_tokens  # (B, M, E), detached
        return out
