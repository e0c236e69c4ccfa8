"""What DeepSpeed trains: the dual encoder alone, or with IRRA's heads when the loss config turns them on.

The heads are trained parameters, so they live inside the engine's module and DeepSpeed saves and restores them
with the rest. They are training-only: export, the checkpoints' `model.safetensors` and evaluation take
`dual_encoder(module)`, never the heads. With SDM alone the module is the bare `CLIPDualEncoder`, so checkpoints
keep the key names they always had.

Pure torch: no deepspeed, no process groups.
"""

from __future__ import annotations

import torch
from torch import nn

from data.manifest import MANIFEST, Manifest
from engine.config import Config, ConfigError, OptimConfig
from engine.model import CLIPDualEncoder
from engine.model.build import announce, build_model_with_weights
from engine.model.heads import CrossModalMLM, IdentityClassifier


class DualEncoderWithHeads(nn.Module):
    """`encoder` plus an identity classifier (`num_identities` classes) and/or a cross-modal MLM (`mlm_depth`)."""

    def __init__(self, encoder: CLIPDualEncoder, *, num_identities: int | None, mlm_depth: int | None) -> None:
        super().__init__()
        if num_identities is None and mlm_depth is None:
            raise ValueError("DualEncoderWithHeads needs at least one head; train the bare CLIPDualEncoder instead")
        self.encoder = encoder
        embed_dim = encoder.cfg.embed_dim
        self.id_classifier = IdentityClassifier(embed_dim, num_identities) if num_identities else None
        self.mlm = CrossModalMLM(embed_dim, mlm_depth, encoder.cfg.vocab_size) if mlm_depth else None

    def forward(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        score_ids: torch.Tensor | None = None,
        *,
        mlm_ids: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The encoder's outputs plus `image_logits`, `text_logits` (B, K) and `mlm_logits` (K_drawn, V).

        mlm_positions (B, N) are the drawn tokens of the BERT-masked caption mlm_ids (B, N); mlm_ids None means
        text_ids is that caption (IRRA's released code). IRRA encodes it with the full text encoder, projected to
        the joint space, and predicts the drawn tokens from the image's projected last layer."""
        mlm = self.mlm is not None
        if mlm and mlm_positions is None:
            raise ValueError("this model has an MLM head: pass mlm_positions (and mlm_ids unless text_ids is it)")
        shared = mlm and mlm_ids is None  # IRRA's shared caption: one text pass serves SDM, ID and MLM
        out = self.encoder(images, text_ids, score_ids, image_sequence=mlm, text_sequence=shared)
        if self.id_classifier is not None:
            out["image_logits"] = self.id_classifier(out["image_feats"])  # (B, K)
            out["text_logits"] = self.id_classifier(out["text_feats"])  # (B, K)
        if mlm:
            if shared:
                text_tokens = out.pop("text_sequence")
            else:
                text_tokens = self.encoder.encode_text_tokens(mlm_ids, len(self.encoder.text_model.encoder.layers))
            # (B, N, E) text tokens attend to the (B, 1 + M, E) image tokens -> (K, V) logits of the drawn tokens
            out["mlm_logits"] = self.mlm(text_tokens, out.pop("image_sequence"), mlm_positions)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]


def dual_encoder(module: nn.Module) -> CLIPDualEncoder:
    """The pure dual encoder inside what DeepSpeed trains: what export and evaluation see."""
    return module.encoder if isinstance(module, DualEncoderWithHeads) else module


def build_training_model(config: Config, manifest: Manifest) -> nn.Module:
    """The dual encoder (random or `model.pretrained`), with heads for the losses that are on: fresh, or those of
    an authors' checkpoint in `model.pretrained` where their shapes match (announced in one line)."""
    encoder, weights = build_model_with_weights(config.model, tap_layer=config.nam.tap_layer)
    loss = config.loss
    if loss.id_weight == 0 and loss.mlm_weight == 0:
        if weights is not None:
            announce(f"model.pretrained: {weights.describe()}")
        return encoder
    if loss.id_weight > 0 and not manifest.num_identities:
        raise ConfigError(
            f"loss.id_weight > 0 needs the number of identities, but {manifest.root / MANIFEST} has no "
            "num_identities (pack a benchmark's train split with python -m data.pack_dataset, or set loss.id_weight=0)"
        )
    model = DualEncoderWithHeads(
        encoder,
        num_identities=manifest.num_identities if loss.id_weight > 0 else None,
        mlm_depth=loss.mlm_depth if loss.mlm_weight > 0 else None,
    )
    if weights is not None:
        loaded = load_matching_heads(model, weights.heads)
        announce(f"model.pretrained: {weights.describe(loaded_heads=loaded)}")
    return model


def load_matching_heads(model: DualEncoderWithHeads, heads: dict[str, torch.Tensor]) -> list[str]:
    """Copies each head of `model` (id_classifier, mlm) whose every tensor `heads` holds with the same shape; a head
    of another shape (other identities, MLM depth or vocabulary) keeps its fresh init. Returns the heads loaded, or
    'id_classifier (fresh: ...)' notes for those left."""
    notes = []
    for name in ("id_classifier", "mlm"):
        module = getattr(model, name)
        if module is None:
            continue
        ours = {f"{name}.{k}": v for k, v in module.state_dict().items()}
        found = {k: heads[k] for k in ours if k in heads}
        mismatched = [k for k in found if found[k].shape != ours[k].shape]
        extra = [k for k in heads if k.startswith(f"{name}.") and k not in ours]
        if len(found) == len(ours) and not mismatched and not extra:
            module.load_state_dict({k.removeprefix(f"{name}."): v for k, v in found.items()})
            notes.append(name)
        elif heads:
            first = mismatched[0] if mismatched else (extra[0] if extra else next(k for k in ours if k not in found))
            notes.append(f"none of {name} (the file's differs at {first}: kept fresh)")
    return notes


# IRRA's build_optimizer matches names: "cross" (its cross_attn, cross_modal_transformer) -> 5x, then "bias" -> 2x,
# then "classifier" or "mlm_head" -> 5x, each rule overriding the one before. Under this project's names:
_CROSS_MODAL = ("mlm.cross_attn.", "mlm.blocks.")  # weights at the head factor, biases at the bias factor
_CLASSIFIERS = ("id_classifier.", "mlm.head.")  # weights and biases at the head factor


def irra_lr_factor(name: str, optim: OptimConfig) -> float:
    """The lr multiple IRRA gives the parameter `name` of a DualEncoderWithHeads: the encoder and the MLM's
    ln_pre_text / ln_pre_image / ln_post weights 1x, their biases optim.bias_lr_factor; cross-modal weights
    optim.head_lr_factor, their biases optim.bias_lr_factor; classifier and MLM-head parameters optim.head_lr_factor,
    biases included."""
    if name.startswith(_CLASSIFIERS):
        return optim.head_lr_factor
    if "bias" in name.rsplit(".", 1)[-1]:
        return optim.bias_lr_factor
    return optim.head_lr_factor if name.startswith(_CROSS_MODAL) else 1.0


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Optimizer groups, each with its own lr and weight decay: lr = optim.lr times IRRA's multiple
    (irra_lr_factor), biases (LayerNorm's too, as IRRA matches "bias" in the name) with optim.bias_weight_decay.
    optim.single_lr puts everything at optim.lr. The scheduler scales every group by the same factor, so the
    multiples hold throughout."""
    decay = optim.weight_decay
    if optim.single_lr:
        return [{"params": list(model.parameters()), "lr": optim.lr, "weight_decay": decay}]
    bias_decay = decay if optim.bias_weight_decay is None else optim.bias_weight_decay
    groups: dict[tuple[float, float], dict] = {}  # parameters with the same lr and decay share a group
    for name, parameter in model.named_parameters():
        is_bias = "bias" in name.rsplit(".", 1)[-1]
        factor = irra_lr_factor(name, optim)  # the encoder's names (encoder.* or bare) match no head rule
        settings = (optim.lr * factor, bias_decay if is_bias else decay)
        groups.setdefault(settings, {"params": [], "lr": settings[0], "weight_decay": settings[1]})["params"].append(
            parameter
        )
    return list(groups.values())


__all__ = [
    "DualEncoderWithHeads",
    "build_training_model",
    "dual_encoder",
    "irra_lr_factor",
    "load_matching_heads",
    "parameter_groups",
]
