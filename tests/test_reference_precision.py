"""train.precision=fp16_reference: which parameters the reference's `convert_weights` makes fp16, what Adam does to
fp16 weights at the reference's lr and eps, the config it needs, and DeepSpeed leaving both the dtypes and the
optimizer alone. The training itself needs CUDA (fp16 autocast) and is refused in one line on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.config import ConfigError, OptimConfig, load_config
from engine.model import CLIPDualEncoder
from engine.model.training_model import DualEncoderWithHeads, parameter_groups
from engine.runtime.preflight import check_machine
from engine.runtime.reference_precision import FP16_REFERENCE, cast_like_reference, reference_autocast
from engine.runtime.schedule import build_optimizer
from tests.helpers import run_on_ranks, tiny_model_config

REFERENCE = ["train.precision=fp16_reference", "optim.optimizer=adam", "optim.eps=1e-3", "optim.lr=1e-5"]
# What the reference keeps fp32, by name: LayerNorms, the token and position tables and the class embedding.
KEPT_FP32 = ("layer_norm", "layrnorm", "layernorm", "ln_", ".ln.", "token_embedding", "position_embedding", "class_")


def kept_fp32(name: str) -> bool:
    return any(part in name for part in KEPT_FP32)


def test_the_encoder_casts_like_convert_weights():
    model = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    cast = cast_like_reference(model)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert sorted(cast) == sorted(name for name, dtype in dtypes.items() if dtype == torch.float16)
    for name, dtype in dtypes.items():
        assert dtype == (torch.float32 if kept_fp32(name) else torch.float16), name
    fp16 = {
        "vision_model.embeddings.patch_embedding.weight",  # the patch Conv2d
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.bias",  # Linear biases too
        "text_model.encoder.layers.1.self_attn.out_proj.bias",
        "text_model.encoder.layers.1.mlp.fc1.bias",
        "visual_projection.weight",
        "text_projection.weight",
    }
    fp32 = {
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.encoder.layers.0.layer_norm1.bias",
        "text_model.final_layer_norm.weight",
    }
    assert fp16 <= set(cast) and not fp32 & set(cast)
    assert all(dtypes[name] == torch.float32 for name in fp32)
    assert model.logit_scale.dtype == torch.float32  # a buffer: untouched


def test_the_heads_cast_like_convert_weights_including_multihead_attention():
    """IRRA applies convert_weights to the whole model: its heads' Linear and MultiheadAttention layers too."""
    encoder = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    model = DualEncoderWithHeads(encoder, num_identities=5, mlm_depth=1)
    cast = set(cast_like_reference(model))
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if kept_fp32(name) else torch.float16), name
    assert {"mlm.cross_attn.in_proj_weight", "mlm.cross_attn.in_proj_bias", "mlm.cross_attn.out_proj.weight"} <= cast
    assert {"id_classifier.classifier.weight", "id_classifier.classifier.bias"} <= cast
    assert model.mlm.ln_post.weight.dtype == torch.float32


def test_bare_projection_parameters_are_cast_and_other_bare_parameters_are_not():
    """OpenAI's CLIP holds `proj` and `text_projection` as bare parameters; convert_weights casts them by name."""
    model = nn.Module()
    model.visual = nn.Module()
    model.visual.proj = nn.Parameter(torch.randn(4, 3))
    model.text_projection = nn.Parameter(torch.randn(4, 3))
    model.positional_embedding = nn.Parameter(torch.randn(5, 4))
    assert sorted(cast_like_reference(model)) == ["text_projection", "visual.proj"]
    assert model.positional_embedding.dtype == torch.float32


def adam_step(value: float, dtype: torch.dtype, *, eps: float = 1e-3, grad: float = 1.0) -> torch.Tensor:
    """One torch Adam step at the reference's lr on a one-element parameter of `dtype`; returns it after."""
    parameter = nn.Parameter(torch.tensor([value], dtype=dtype))
    optimizer = build_optimizer([{"params": [parameter]}], OptimConfig(optimizer="adam", lr=1e-5, eps=eps))
    parameter.grad = torch.tensor([grad], dtype=dtype)
    optimizer.step()
    return parameter.detach()


def test_an_adam_step_below_fp16_resolution_rounds_away_as_in_the_reference():
    assert adam_step(1.0, torch.float16).item() == 1.0  # lr 1e-5 is under half of fp16's spacing at 1.0 (2^-11)
    assert adam_step(1.0, torch.float32).item() < 1.0  # an fp32 master copy would have moved
    assert adam_step(0.01, torch.float16).item() < 0.01  # small weights still move: spacing 2^-17 at 0.01
    assert adam_step(1.0, torch.float16).dtype == torch.float16


def test_fp16_moments_need_the_reference_eps():
    """A gradient whose square underflows in fp16 leaves Adam's second moment at 0: eps 1e-8 (0 in fp16) divides by
    zero, the reference's 1e-3 keeps the step finite."""
    assert not torch.isfinite(adam_step(1.0, torch.float16, eps=1e-8, grad=1e-4)).all()
    assert torch.isfinite(adam_step(1.0, torch.float16, eps=1e-3, grad=1e-4)).all()


def test_the_config_requires_the_reference_eps_and_zero_stage_0():
    assert load_config(None, REFERENCE).train.precision == FP16_REFERENCE
    with pytest.raises(ConfigError, match=r"optim\.eps >= 1e-3.*got 1e-08"):
        load_config(None, ["train.precision=fp16_reference"])
    with pytest.raises(ConfigError, match=r"train\.zero_stage=0 \(got 1\)"):
        load_config(None, [*REFERENCE, "train.zero_stage=1"])


def test_without_cuda_it_is_refused_in_one_line_naming_the_key():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine trains in fp16_reference")
    with pytest.raises(ConfigError) as refused:
        check_machine(load_config(None, REFERENCE))
    message = str(refused.value)
    assert "\n" not in message and "train.precision=fp16_reference" in message and "CUDA" in message


def test_autocast_only_for_fp16_reference():
    with reference_autocast("bf16"):
        assert not torch.is_autocast_enabled("cuda")
    if torch.cuda.is_available():
        with reference_autocast(FP16_REFERENCE):
            assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.float16


def _deepspeed_keeps_the_dtypes_and_the_optimizer(rank: int, world: int) -> dict:
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from engine.runtime.deepspeed_setup import deepspeed_config

    accelerator = get_accelerator()
    if torch.float16 not in accelerator.supported_dtypes():  # DeepSpeed's CPU accelerator reduces no fp16 gradients;
        supported = [*accelerator.supported_dtypes(), torch.float16]  # CUDA's does, and gloo can
        accelerator.supported_dtypes = lambda: supported
    config = load_config(None, REFERENCE)
    model = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    cast = cast_like_reference(model)
    optimizer = build_optimizer(parameter_groups(model, config.optim), config.optim)
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(config, world_size=world)
    )
    before = {name: p.detach().clone() for name, p in ds_engine.module.named_parameters()}
    # No fp16 forward on the CPU; a loss straight from the parameters still goes through backward and step.
    loss = sum((p.float() * 0.5).sum() for p in ds_engine.module.parameters())
    ds_engine.backward(loss)
    ds_engine.step()
    params = dict(ds_engine.module.named_parameters())
    return {
        "same_optimizer": ds_engine.optimizer is optimizer,  # not wrapped: no master copy, no loss scaler
        "dtypes_kept": all((p.dtype == torch.float16) == (name in cast) for name, p in params.items()),
        "stepped_fp16": [name for name in cast if not torch.equal(params[name], before[name])],
        "optimizer_holds": sorted({str(p.dtype) for group in optimizer.param_groups for p in group["params"]}),
    }


def test_deepspeed_steps_the_fp16_parameters_with_the_torch_optimizer():
    (result,) = run_on_ranks(1, _deepspeed_keeps_the_dtypes_and_the_optimizer)
    assert result["same_optimizer"] and result["dtypes_kept"]
    assert result["optimizer_holds"] == ["torch.float16", "torch.float32"]  # the fp16 weights themselves
    assert result["stepped_fp16"]  # weights under 1/32 in magnitude move even at lr 1e-5
