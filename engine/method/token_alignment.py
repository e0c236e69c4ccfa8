"""A FILIP-style token-wise late-interaction loss at the tap layer, for the synthetic stand-in for CLIP only.

Not part of the method. NAM (docs/method.md) assumes that web-pretrained CLIP's layer-l token-patch similarity
reflects correspondence. A tiny CLIP trained from scratch with a global contrastive loss does not get that
property at this scale (its noise AUROC stays near 0.5 at every layer), so the stand-in (configs/synthetic_clip.yaml)
is trained with this loss beside the global one, which states the assumption as a training objective. It reads
exactly the features NAM scores: the first `tap_layer` text blocks -> final_layer_norm -> text_projection, and
the vision tokens after block `tap_layer` -> post_layernorm -> visual_projection (engine/model/clip.py), with gradient.

Per pair (caption i, image j): s_t2i(i, j) = mean over i's valid tokens of max over j's patches of the cosine,
s_i2t(j, i) = mean over j's patches of max over i's valid tokens; the loss is the mean of the two cross-entropies
of s / temperature against the matching pair, over the rank's local batch (FILIP, Yao et al. 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.method.nam import valid_token_mask
from engine.model import CLIPDualEncoder


def tap_patch_tokens(model: CLIPDualEncoder, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, M, E) projected patch tokens after block `tap_layer`, with gradient."""
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(images))  # (B, 1 + M, Dv)
    for layer in vision.encoder.layers[: model.tap_layer]:
        hidden = layer(hidden, None, None)[0]
    return model.visual_projection(vision.post_layernorm(hidden[:, 1:]))  # CLS dropped


def token_wise_similarity(
    text_tokens: torch.Tensor, patches: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """text_tokens (B, N, E), patches (B, M, E), valid (B, N) bool -> (s_t2i (B, B), s_i2t (B, B)), row = query."""
    text = F.normalize(text_tokens.float(), dim=-1)
    image = F.normalize(patches.float(), dim=-1)
    cosine = torch.einsum("ine,jme->ijnm", text, image)  # (B_text, B_image, N, M)
    per_token = cosine.amax(dim=3).masked_fill(~valid[:, None, :], 0.0)  # (B, B, N): best patch per token
    t2i = per_token.sum(dim=2) / valid.sum(dim=1, keepdim=True).clamp(min=1)  # (B_text, B_image)
    per_patch = cosine.masked_fill(~valid[:, None, :, None], -2.0).amax(dim=2)  # (B, B, M): best token per patch
    i2t = per_patch.mean(dim=2).t()  # (B_image, B_text)
    return t2i, i2t


def filip_loss(model: CLIPDualEncoder, images: torch.Tensor, ids: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """The symmetric token-wise contrastive loss of the local batch: images (B, 3, H, W), ids (B, N) -> scalar.
    Captions of one image (same pid) are rare in a web-like batch and counted as negatives, as FILIP does."""
    text_tokens = model.encode_text_tokens(ids, model.tap_layer)  # (B, N, E), with gradient
    patches = tap_patch_tokens(model, images)  # (B, M, E)
    t2i, i2t = token_wise_similarity(text_tokens, patches, valid_token_mask(ids))
    target = torch.arange(ids.shape[0], device=ids.device)
    return (F.cross_entropy(t2i / temperature, target) + F.cross_entropy(i2t / temperature, target)) / 2


__all__ = ["filip_loss", "tap_patch_tokens", "token_wise_similarity"]
