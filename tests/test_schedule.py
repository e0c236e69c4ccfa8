"""The reference recipe: optimizer, per-epoch warmup-cosine schedule, parameter groups, augmentation and the
position-table resampling, as the paper and fine-tuning configs set them (docs/method.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data.transforms import CLIP_MEAN, CLIP_STD, eval_transform, train_transform
from engine.config import AugmentConfig, load_config
from engine.model import CLIPDualEncoder
from engine.model.training_model import DualEncoderWithHeads, parameter_groups
from engine.model.weights import resample_position_table
from engine.runtime.deepspeed_setup import deepspeed_config
from engine.runtime.schedule import build_optimizer, build_scheduler, warmup_cosine_factor
from tests.helpers import REPO, SOURCES, tiny_model_config

PAPER = REPO / "configs" / "pretrain_luperson_mllm.yaml"


def reference_lr(epoch: int, lr: float = 1e-5) -> float:
    """The reference's LRSchedulerWithWarmup at 30 epochs: linear warmup over 5 from 0.1 x lr, cosine to 0."""
    if epoch < 5:
        return lr * (0.1 * (1 - epoch / 5) + epoch / 5)
    return lr * 0.5 * (1 + math.cos(math.pi * (epoch - 5) / 25))


def test_paper_config_lr_at_each_epoch_follows_the_reference_formula():
    config = load_config(PAPER)
    model = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    optimizer = build_optimizer(parameter_groups(model, config.optim), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, epochs=config.train.epochs, total_steps=30 * 781)
    seen = {}
    for epoch in range(config.train.epochs):
        seen[epoch] = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()  # the epoch's steps leave the lr alone
        scheduler.step()  # what the trainer does at an epoch end when optim.schedule is per_epoch
    for epoch in (0, 1, 4, 5, 6, 17, 29):
        assert seen[epoch] == pytest.approx([reference_lr(epoch)] * len(seen[epoch]), rel=1e-12, abs=0), epoch
    assert seen[0][0] == pytest.approx(1e-6) and seen[5][0] == pytest.approx(1e-5)


def test_paper_config_optimizer_is_adam_with_eps_1e3_coupled_decay_and_no_clipping():
    config = load_config(PAPER)
    model = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    optimizer = build_optimizer(parameter_groups(model, config.optim), config.optim)
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["eps"] == 1e-3 and optimizer.defaults["betas"] == (0.9, 0.999)
    assert optimizer.defaults["decoupled_weight_decay"] is False  # L2 added to the gradient, not AdamW's decay
    assert len(optimizer.param_groups) == 1  # one lr and one decay for every parameter
    assert optimizer.param_groups[0]["weight_decay"] == 4e-5 and optimizer.param_groups[0]["lr"] == 1e-5
    ds = deepspeed_config(config, world_size=8)
    assert ds["gradient_clipping"] == 0 and "optimizer" not in ds and "scheduler" not in ds
    assert ds["train_batch_size"] == 512
    default = build_optimizer(parameter_groups(model, load_config().optim), load_config().optim)
    assert type(default) is torch.optim.AdamW and default.defaults["decoupled_weight_decay"] is True


def test_coupled_decay_really_is_l2_on_the_gradient():
    """One Adam step with decay w on a zero gradient moves a parameter like a gradient of w * p would."""
    config = load_config(PAPER, ["optim.weight_decay=0.5"])
    with_decay, with_gradient = torch.nn.Parameter(torch.tensor([2.0])), torch.nn.Parameter(torch.tensor([2.0]))
    first = build_optimizer([{"params": [with_decay]}], config.optim)
    second = build_optimizer([{"params": [with_gradient]}], load_config(PAPER, ["optim.weight_decay=0"]).optim)
    with_decay.grad, with_gradient.grad = torch.zeros(1), torch.tensor([0.5 * 2.0])
    first.step()
    second.step()
    assert torch.equal(with_decay.data, with_gradient.data)


@pytest.mark.parametrize("name", ["finetune_cuhk", "finetune_icfg", "finetune_rstp"])
def test_finetune_configs_carry_irra_groups_and_the_per_epoch_schedule(name: str):
    config = load_config(REPO / "configs" / f"{name}.yaml", ["model.pretrained=null"])
    assert (config.optim.optimizer, config.optim.eps, config.optim.schedule) == ("adam", 1e-3, "per_epoch")
    assert (config.optim.warmup_epochs, config.optim.warmup_start_factor, config.train.epochs) == (5, 0.1, 60)
    encoder = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    model = DualEncoderWithHeads(encoder, num_identities=5, mlm_depth=1)
    groups = parameter_groups(model, config.optim)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(by_id) == len(list(model.parameters()))
    names = dict(model.named_parameters())
    assert by_id[id(names["encoder.text_projection.weight"])] == (1e-5, 4e-5)
    assert by_id[id(names["encoder.vision_model.post_layernorm.bias"])] == (2e-5, 0.0)
    head_weight = next(n for n in names if n.startswith("id_classifier") and n.endswith("weight"))
    assert by_id[id(names[head_weight])] == pytest.approx((5e-5, 4e-5))
    single = parameter_groups(model, load_config(REPO / "configs" / f"{name}.yaml", ["optim.single_lr=true"]).optim)
    assert len(single) == 1 and (single[0]["lr"], single[0]["weight_decay"]) == (1e-5, 4e-5)


def test_per_step_schedule_warms_up_from_the_start_factor_then_decays_to_the_floor():
    assert warmup_cosine_factor(0, warmup=10, total=100, start_factor=0.0) == 0.0
    assert warmup_cosine_factor(5, warmup=10, total=100, start_factor=0.2) == pytest.approx(0.6)
    assert warmup_cosine_factor(10, warmup=10, total=100, start_factor=0.2) == 1.0
    assert warmup_cosine_factor(100, warmup=10, total=100, start_factor=0.0, min_ratio=0.1) == pytest.approx(0.1)


def test_resize_is_bilinear_and_erasing_writes_the_clip_mean_triple():
    image = Image.new("RGB", (20, 40), (200, 100, 50))
    assert train_transform((32, 16), AugmentConfig()).transforms[0].interpolation.value == "bilinear"
    assert eval_transform((32, 16)).transforms[0].interpolation.value == "bilinear"
    erase_all = AugmentConfig(hflip_prob=0, crop_padding=0, erasing_prob=1.0, erasing_scale=(0.3, 0.3))
    torch.manual_seed(0)
    out = train_transform((32, 16), erase_all)(image)  # (3, 32, 16)
    plain = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), CLIP_MEAN, CLIP_STD, strict=True)]
    for channel in range(3):
        values = out[channel].flatten()
        erased = torch.isclose(values, torch.tensor(CLIP_MEAN[channel]), atol=1e-6)
        kept = torch.isclose(values, torch.tensor(plain[channel]), atol=1e-2)
        assert 0.25 < erased.float().mean() < 0.35 and bool((erased | kept).all())
    zero = train_transform(
        (32, 16), AugmentConfig(hflip_prob=0, crop_padding=0, erasing_prob=1.0, erasing_value="zero")
    )
    assert (zero(image) == 0).any()


def test_position_table_is_resampled_bilinearly_unless_bicubic_is_asked_for():
    table = torch.randn(1 + 14 * 14, 8)
    square = table[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    bilinear = F.interpolate(square, size=(24, 8), mode="bilinear", align_corners=False)
    expected = torch.cat([table[:1], bilinear.permute(0, 2, 3, 1).reshape(24 * 8, 8)])
    torch.testing.assert_close(resample_position_table(table, (14, 14), (24, 8)), expected)
    bicubic = resample_position_table(table, (14, 14), (24, 8), mode="bicubic")
    assert not torch.allclose(bicubic, expected) and torch.equal(bicubic[0], table[0])


@pytest.mark.slow
def test_the_trainer_steps_a_per_epoch_schedule_at_epoch_ends_and_restores_it(tmp_path: Path):
    """The real entry point, one process: the lr logged in every epoch is the formula's, before and after a
    mid-epoch stop and resume."""
    from data.pack import pack
    from data.synthetic import generate

    generate(tmp_path / "syn", seed=0, train_images=24, test_identities=4, images_per_test_identity=2, progress=False)
    raw = tmp_path / "syn" / "luperson_mllm"
    pack(raw / "imgs", [raw / f"{s}.json" for s in SOURCES], tmp_path / "shards", images_per_shard=12)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {image_size: [32, 16], vision_width: 32, vision_layers: 1, vision_heads: 2, text_width: 32, "
        "text_layers: 1, text_heads: 2, embed_dim: 16, context_length: 40}\n"
        f"nam: {{tap_layer: 1}}\ndata: {{shards: {tmp_path / 'shards'}, num_workers: 0, shuffle_buffer: 32}}\n"
        "optim: {optimizer: adam, lr: 1.0e-3, eps: 1.0e-3, grad_clip: 0, schedule: per_epoch, warmup_epochs: 2, "
        "warmup_start_factor: 0.1}\ntrain: {epochs: 4, batch_size: 16, log_every_steps: 1}\neval: {every_epochs: 0}\n"
    )
    command = [sys.executable, "-m", "launcher.train", "--config", str(config), f"train.run_dir={tmp_path / 'run'}"]
    for extra in (["train.max_steps=9"], ["--resume", "latest"]):  # 6 batches per epoch: stops mid-epoch 1
        result = subprocess.run(command + extra, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lr" in r]
    expected = {e: 1e-3 * warmup_cosine_factor(e, warmup=2, total=4, start_factor=0.1) for e in range(4)}
    assert {r["epoch"] for r in steps} == {0, 1, 2, 3} and len(steps) == 24
    for record in steps:
        assert record["lr"] == pytest.approx(expected[record["epoch"]], rel=1e-9), record
