"""IRRA's identity and cross-modal MLM losses for fine-tuning (docs/method.md): the math, the heads, how they attach
to the dual encoder, and a fine-tuning run through the real entry point that logs, exports, evaluates and resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from data.manifest import Manifest
from data.tokenizer import EOT_ID, MASK_ID, PAD_ID, SOT_ID, CaptionTokenizer
from engine.config import Config, ConfigError, load_config
from engine.method.losses import id_loss, mlm_loss, sdm_loss
from engine.method.mlm import mlm_masked_captions
from engine.model import CLIPDualEncoder
from engine.model.heads import CrossModalMLM
from engine.model.training_model import DualEncoderWithHeads, build_training_model, dual_encoder, parameter_groups
from engine.runtime.checkpoint import export_model, load_exported_model
from tests.helpers import REPO, rstp_entry, tiny_model_config, write_benchmark

CAPTIONS = [
    "a woman in a red coat, black trousers and white sneakers",
    "the man wears a dark blue t-shirt and jeans and carries a backpack on his left shoulder",
    "a man",
    "",  # SOT, EOT: nothing to mask
]


def tiny_heads_model(*, identities: int | None = 5, mlm_depth: int | None = 2, seed: int = 0) -> DualEncoderWithHeads:
    torch.manual_seed(seed)
    return DualEncoderWithHeads(
        CLIPDualEncoder(tiny_model_config(), tap_layer=1), num_identities=identities, mlm_depth=mlm_depth
    )


def caption_ids(count: int = 4) -> torch.Tensor:
    """(count, 16) ids of CAPTIONS, cycled; the second caption is truncated to end in EOT."""
    return CaptionTokenizer(context_length=16)([CAPTIONS[i % len(CAPTIONS)] for i in range(count)])


# --- losses -------------------------------------------------------------------------------------------------------


def test_id_loss_is_the_mean_of_both_modalities_cross_entropies():
    generator = torch.Generator().manual_seed(0)
    image_logits, text_logits = torch.randn(2, 6, 9, generator=generator)
    labels = torch.tensor([0, 3, 3, 8, 1, 5])
    rows = torch.arange(6)
    manual_image = -(image_logits.exp() / image_logits.exp().sum(1, keepdim=True))[rows, labels].log().mean()
    manual_text = -(text_logits.exp() / text_logits.exp().sum(1, keepdim=True))[rows, labels].log().mean()
    got = id_loss(image_logits, text_logits, labels)
    torch.testing.assert_close(got, (manual_image + manual_text) / 2, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="equal shape"):
        id_loss(image_logits, text_logits[:, :5], labels)


def test_mlm_loss_counts_only_the_drawn_positions():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, generator=generator)  # (B, N, V)
    ids = torch.randint(0, 11, (3, 7), generator=generator)
    drawn = torch.zeros(3, 7, dtype=torch.bool)
    drawn[0, 2] = drawn[1, 1] = drawn[1, 5] = drawn[2, 3] = True
    picked = [(0, 2), (1, 1), (1, 5), (2, 3)]
    manual = -sum(F.log_softmax(logits[b, n], dim=-1)[ids[b, n]] for b, n in picked) / len(picked)
    torch.testing.assert_close(mlm_loss(logits, ids, drawn), manual, rtol=1e-6, atol=1e-6)

    elsewhere = logits.clone()
    elsewhere[~drawn] = torch.randn(int((~drawn).sum()), 11, generator=generator) * 10
    torch.testing.assert_close(mlm_loss(elsewhere, ids, drawn), manual, rtol=1e-6, atol=1e-6)
    moved = logits.clone()
    moved[1, 5, ids[1, 5]] -= 3.0
    assert mlm_loss(moved, ids, drawn) > manual + 0.1  # a drawn position does count

    # The compact (K, V) form the MLM head returns for the drawn positions gives the same loss.
    torch.testing.assert_close(mlm_loss(logits[drawn], ids, drawn), manual, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="4 are drawn"):
        mlm_loss(logits[drawn][:3], ids, drawn)


def test_mlm_loss_without_drawn_tokens_is_zero_not_nan():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    loss = mlm_loss(logits, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mlm_masking_never_touches_special_tokens_and_is_bert_style():
    ids = caption_ids(4).repeat(500, 1)  # (2000, 16)
    mlm_ids, drawn = mlm_masked_captions(ids, 0.15, torch.Generator().manual_seed(0))
    special = (ids == SOT_ID) | (ids == EOT_ID) | (ids == PAD_ID)
    assert special.any() and not (drawn & special).any()
    assert torch.equal(mlm_ids[special], ids[special])
    assert not ((mlm_ids != ids) & ~drawn).any()  # only drawn tokens change
    words = ~special
    has_words = words.any(dim=1)
    assert (drawn.any(dim=1) == has_words).all()  # at least one per caption that has a word, none in the empty one
    # Among the long captions (14 words) the forced extra draw barely matters: about 15% are drawn.
    long_rows = torch.arange(len(ids)) % 4 == 1
    share = drawn[long_rows].sum() / words[long_rows].sum()
    assert 0.13 < share < 0.18, share
    to_mask = (mlm_ids == MASK_ID) & drawn
    assert 0.76 < to_mask.sum() / drawn.sum() < 0.84
    to_random = (mlm_ids != ids) & (mlm_ids != MASK_ID) & drawn
    assert 0.07 < to_random.sum() / drawn.sum() < 0.13
    assert not ((mlm_ids == SOT_ID) | (mlm_ids == EOT_ID))[words].any()  # EOT pooling by argmax stays right


# --- heads and the training module ---------------------------------------------------------------------------------


def test_heads_shapes_and_the_shared_caption_pass_equals_the_encoder():
    model = tiny_heads_model().eval()
    ids = caption_ids(4)
    mlm_ids, drawn = mlm_masked_captions(ids, 0.15, torch.Generator().manual_seed(0))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        shared = model(images, mlm_ids, mlm_positions=drawn)
        separate = model(images, ids, score_ids=ids, mlm_ids=mlm_ids, mlm_positions=drawn)
        encoder = model.encoder
        image_feats, text_feats = encoder.encode_image(images), encoder.encode_text(mlm_ids)
    drawn_count = int(drawn.sum())
    assert drawn_count >= 3
    assert shared["image_logits"].shape == shared["text_logits"].shape == (4, 5)
    assert shared["mlm_logits"].shape == (drawn_count, 49408)
    assert "image_sequence" not in shared and "text_sequence" not in shared
    # One text pass serves SDM, ID and MLM in the shared mode, and it is the encoder's own t_eos and v_cls.
    torch.testing.assert_close(shared["image_feats"], image_feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared["text_feats"], text_feats, rtol=1e-5, atol=1e-5)
    # Separately, the MLM caption still gives the same logits, and NAM's scoring outputs are still there.
    torch.testing.assert_close(separate["mlm_logits"], shared["mlm_logits"], rtol=1e-5, atol=1e-5)
    assert separate["image_tokens"].shape == (4, 4, 32) and separate["score_tokens"].shape == (4, 16, 32)
    # An untrained MLM head predicts about uniformly: CE near ln(vocabulary).
    assert abs(mlm_loss(shared["mlm_logits"], ids, drawn).item() - math.log(49408)) < 0.5


def test_mlm_head_full_logits_agree_with_the_drawn_ones():
    head = CrossModalMLM(width=32, depth=2, vocab_size=50)
    text, image = torch.randn(3, 6, 32), torch.randn(3, 5, 32)
    positions = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) < 0.4
    full = head(text, image)  # (B, N, V)
    assert full.shape == (3, 6, 50)
    torch.testing.assert_close(head(text, image, positions), full[positions], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradients_reach_the_heads_and_both_encoders():
    model = tiny_heads_model()
    ids = caption_ids(4)
    mlm_ids, drawn = mlm_masked_captions(ids, 0.15, torch.Generator().manual_seed(0))
    images = torch.randn(4, 3, 32, 32)
    pids = torch.tensor([0, 1, 1, 4])

    def grad_norms(loss: torch.Tensor) -> dict[str, float]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        names = {
            "classifier": "id_classifier.classifier.weight",
            "cross_attn": "mlm.cross_attn.in_proj_weight",
            "mlm_block": "mlm.blocks.1.mlp.c_proj.weight",
            "vocab": "mlm.head.fc.weight",
            "vision": "encoder.vision_model.embeddings.patch_embedding.weight",
            "text": "encoder.text_model.embeddings.token_embedding.weight",
        }
        parameters = dict(model.named_parameters())
        return {
            key: 0.0 if parameters[name].grad is None else float(parameters[name].grad.norm())
            for key, name in names.items()
        }

    out = model(images, mlm_ids, mlm_positions=drawn)
    total = sdm_loss(out["image_feats"], out["text_feats"], pids) + id_loss(
        out["image_logits"], out["text_logits"], pids
    )
    norms = grad_norms(total + mlm_loss(out["mlm_logits"], ids, drawn))
    assert all(value > 0 for value in norms.values()), norms

    # MLM alone trains both towers through the cross-attention (the image side through its last-layer tokens).
    out = model(images, mlm_ids, mlm_positions=drawn)
    norms = grad_norms(mlm_loss(out["mlm_logits"], ids, drawn))
    assert norms["vision"] > 0 and norms["text"] > 0 and norms["vocab"] > 0 and norms["classifier"] == 0

    out = model(images, mlm_ids, mlm_positions=drawn)
    norms = grad_norms(id_loss(out["image_logits"], out["text_logits"], pids))
    assert norms["classifier"] > 0 and norms["vision"] > 0 and norms["text"] > 0 and norms["vocab"] == 0


def test_export_keeps_only_the_dual_encoder(tmp_path: Path):
    model = tiny_heads_model()
    export_model(model, tmp_path / "export", model.encoder.cfg, tap_layer=1)
    saved = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert set(saved) == set(CLIPDualEncoder(tiny_model_config(), tap_layer=1).state_dict())
    assert not any(name.startswith(("encoder.", "id_classifier", "mlm")) for name in saved)
    loaded, _ = load_exported_model(tmp_path / "export")
    ids, images = caption_ids(2), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(ids), model.encoder.encode_text(ids))
        torch.testing.assert_close(loaded.encode_image(images), model.encoder.encode_image(images))
    assert dual_encoder(model) is model.encoder and dual_encoder(loaded) is loaded


def _manifest(root: Path, num_identities: int | None) -> Manifest:
    return Manifest(root, ["caption0"], 4, 4, [], num_identities=num_identities)


def _tiny_config(*overrides: str) -> Config:
    """tiny_model_config's model, SDM on unmasked captions, plus `overrides`."""
    model = (
        "{image_size: [32, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2,"
    )
    model += " text_heads: 2, embed_dim: 32, context_length: 16}"
    return load_config(None, [f"model={model}", "nam.tap_layer=1", "nam.masking=none", *overrides])


def test_training_model_has_only_the_heads_the_config_turns_on(tmp_path: Path):
    assert type(build_training_model(_tiny_config(), _manifest(tmp_path, None))) is CLIPDualEncoder  # SDM alone
    both = build_training_model(_tiny_config("loss.id_weight=1", "loss.mlm_weight=1"), _manifest(tmp_path, 7))
    assert both.id_classifier.classifier.out_features == 7 and len(both.mlm.blocks) == 4  # IRRA's cmt_depth
    mlm_only = build_training_model(_tiny_config("loss.mlm_weight=0.5", "loss.mlm_depth=1"), _manifest(tmp_path, None))
    assert mlm_only.id_classifier is None and len(mlm_only.mlm.blocks) == 1
    with pytest.raises(ConfigError) as error:
        build_training_model(_tiny_config("loss.id_weight=1"), _manifest(tmp_path / "lup_shards", None))
    message = str(error.value)
    assert "loss.id_weight" in message and str(tmp_path / "lup_shards" / "manifest.json") in message
    assert "\n" not in message


def test_parameters_learn_at_irras_lr_multiples(tmp_path: Path):
    """IRRA's build_optimizer: "cross" 5x, then "bias" 2x, then "classifier" / "mlm_head" 5x, each overriding."""
    config = _tiny_config(
        "loss.id_weight=1", "loss.mlm_weight=1", "optim.lr=2.0e-5", "optim.head_lr_factor=5",
        "optim.bias_lr_factor=2", "optim.bias_weight_decay=0",
    )  # fmt: skip
    model = build_training_model(config, _manifest(tmp_path, 3))
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in parameter_groups(model, config.optim) for p in g["params"]}
    assert len(lr_of) == len(list(model.parameters()))
    expected = {  # name -> (lr multiple, decayed)
        "encoder.vision_model.encoder.layers.0.self_attn.q_proj.weight": (1, True),
        "encoder.vision_model.encoder.layers.0.self_attn.q_proj.bias": (2, False),
        "encoder.text_model.final_layer_norm.bias": (2, False),
        "mlm.ln_pre_text.weight": (1, True),
        "mlm.ln_pre_image.bias": (2, False),
        "mlm.ln_post.weight": (1, True),
        "mlm.cross_attn.in_proj_weight": (5, True),
        "mlm.cross_attn.in_proj_bias": (2, False),
        "mlm.blocks.0.ln_1.weight": (5, True),
        "mlm.blocks.0.ln_1.bias": (2, False),
        "mlm.blocks.0.mlp.c_fc.bias": (2, False),
        "mlm.head.ln.weight": (5, True),
        "mlm.head.ln.bias": (5, False),
        "mlm.head.fc.bias": (5, False),
        "id_classifier.classifier.weight": (5, True),
        "id_classifier.classifier.bias": (5, False),
    }
    parameters = dict(model.named_parameters())
    for name, (multiple, decayed) in expected.items():
        lr, decay = lr_of[id(parameters[name])]
        assert lr == pytest.approx(2e-5 * multiple), name
        assert decay == (config.optim.weight_decay if decayed else 0.0), name
    plain = build_training_model(_tiny_config(), _manifest(tmp_path, None))
    assert len(parameter_groups(plain, _tiny_config().optim)) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.id_weight=-1"], "loss.id_weight must be >= 0"),
        (["loss.mlm_weight=-0.5"], "loss.mlm_weight must be >= 0"),
        (["loss.mlm_prob=0"], "loss.mlm_prob must be in (0, 1]"),
        (["loss.mlm_depth=0"], "loss.mlm_depth must be >= 1"),
        (["optim.head_lr_factor=0"], "optim.head_lr_factor must be > 0"),
        (["loss.mlm_weight=1"], "loss.mlm_shared_caption feeds the MLM-masked caption to SDM"),  # nam.masking=nam
        (["loss.mlm_weight=1", "nam.masking=none", "model.embed_dim=200"], "divisible by the MLM encoder's 3 heads"),
    ],
)
def test_bad_head_settings_name_the_field(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_heads_are_off_by_default_and_nam_keeps_working_with_a_separate_mlm_caption():
    config = load_config()
    assert (config.loss.id_weight, config.loss.mlm_weight) == (0.0, 0.0)
    assert (config.loss.mlm_prob, config.loss.mlm_depth, config.optim.head_lr_factor) == (0.15, 4, 5.0)
    assert load_config(None, ["loss.mlm_weight=1", "loss.mlm_shared_caption=false"]).nam.masking == "nam"


@pytest.mark.parametrize("name", ["finetune_cuhk", "finetune_icfg", "finetune_rstp"])
def test_finetune_configs_follow_irras_recipe(name: str):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert (config.loss.id_weight, config.loss.mlm_weight, config.loss.mlm_depth) == (1.0, 1.0, 4)
    assert config.loss.mlm_shared_caption and config.nam.masking == "none"
    assert (config.optim.lr, config.train.epochs, config.train.batch_size) == (1e-5, 60, 64)


# --- train_step wiring ---------------------------------------------------------------------------------------------


class RecordingEngine:
    """What train_step needs of a DeepSpeed engine, on one process: forward, backward, step."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs) -> dict:
        self.calls.append((args, kwargs))
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_train_step_weights_and_logs_each_loss_part(shared: bool):
    from engine.runtime.trainer import train_step

    config = _tiny_config("loss.id_weight=0.5", "loss.mlm_weight=2", f"loss.mlm_shared_caption={str(shared).lower()}")
    ds_engine = RecordingEngine(tiny_heads_model(identities=4))
    ids = caption_ids(4)
    batch = {
        "ids": ids,
        "caption_id": torch.arange(4),
        "image": torch.randn(4, 3, 32, 32),
        "pid": torch.tensor([0, 1, 1, 3]),
    }
    result = train_step(ds_engine, batch, config, None, epoch=0, generator=torch.Generator().manual_seed(0))
    parts = result["loss_parts"]
    assert set(parts) == {"sdm", "id", "mlm"}
    torch.testing.assert_close(result["loss"], parts["sdm"] + 0.5 * parts["id"] + 2 * parts["mlm"])
    text_ids, kwargs = ds_engine.calls[0][0][1], ds_engine.calls[0][1]
    drawn = kwargs["mlm_positions"]
    assert drawn.any() and not (drawn & (ids >= SOT_ID)).any()
    if shared:  # SDM and ID see the MLM caption, as IRRA's released code does; one text pass
        assert "mlm_ids" not in kwargs and not torch.equal(text_ids, ids)
        assert torch.equal(text_ids[~drawn], ids[~drawn])
    else:
        assert torch.equal(text_ids, ids) and not torch.equal(kwargs["mlm_ids"], ids)
    assert ds_engine.module.id_classifier.classifier.weight.grad.norm() > 0
    assert ds_engine.module.mlm.head.fc.weight.grad.norm() > 0

    plain = RecordingEngine(CLIPDualEncoder(tiny_model_config(), tap_layer=1))
    result = train_step(plain, batch, _tiny_config(), None, epoch=0, generator=torch.Generator().manual_seed(0))
    assert result["loss_parts"] == {} and plain.calls[0][1] == {"score_ids": None}


# --- data ----------------------------------------------------------------------------------------------------------


def test_pack_dataset_stores_contiguous_identity_labels(tmp_path: Path):
    from data.pack_dataset import pack_dataset

    entries = [
        rstp_entry("train", 40, "0040_c1.jpg", ["forty a", "forty b"]),
        rstp_entry("train", 5, "0005_c1.jpg", ["five a", "five b"]),
        rstp_entry("train", 17, "0017_c1.jpg", ["seventeen a", "seventeen b"]),
        rstp_entry("train", 5, "0005_c2.jpg", ["five c", "five d"]),
        rstp_entry("test", 99, "0099_c1.jpg", ["test only", "not packed"]),
    ]
    root = write_benchmark(tmp_path / "RSTPReid", "data_captions.json", entries, path_field="img_path")
    written = pack_dataset("rstpreid", root, tmp_path / "shards", images_per_shard=3)
    assert written["num_identities"] == written["identities"] == 3
    assert Manifest.load(tmp_path / "shards").num_identities == 3
    pid_of = {}
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    pid_of[meta["image"]] = meta["pid"]
    assert pid_of == {"0040_c1.jpg": 2, "0005_c1.jpg": 0, "0017_c1.jpg": 1, "0005_c2.jpg": 0}


# --- the real entry point ------------------------------------------------------------------------------------------

TINY = """
model: {image_size: [64, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2,
        text_heads: 2, embed_dim: 32, context_length: 40, pretrained: PRETRAINED}
nam: {tap_layer: 1, masking: none}
loss: {id_weight: 1.0, mlm_weight: 1.0, mlm_depth: 2}
data: {shards: SHARDS, num_workers: 0, shuffle_buffer: 64, augment: {crop_padding: 2}}
optim: {lr: 1.0e-3}
train: {epochs: 2, batch_size: 8, log_every_steps: 2}
eval: {cuhk_pedes: CUHK}
"""
BATCHES_PER_EPOCH = 4  # 16 images x 2 captions / batch 8
HEAD_KEYS = ("id_classifier.classifier.weight", "mlm.cross_attn.in_proj_weight", "mlm.head.fc.weight")


def _launch(config: Path, run_dir: Path, *extra: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launcher.train", "--config", str(config), f"train.run_dir={run_dir}", *extra]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect_rc, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _deepspeed_module_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    (states,) = tag_dir.glob("mp_rank_*_model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


@pytest.fixture(scope="module")
def finetune_workspace(tmp_path_factory) -> dict[str, Path]:
    from data.pack_dataset import pack_dataset
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("irra")
    generate(root / "synthetic", seed=0, train_images=4, test_identities=8, images_per_test_identity=2, progress=False)
    cuhk = root / "synthetic" / "cuhk_pedes"
    manifest = pack_dataset("cuhk-pedes", cuhk, root / "shards", images_per_shard=6)
    assert (manifest["num_images"], manifest["num_identities"], manifest["num_captions"]) == (16, 8, 32)
    config = root / "tiny.yaml"
    text = TINY.replace("SHARDS", str(root / "shards")).replace("CUHK", str(cuhk))
    config.write_text(text.replace("PRETRAINED", str(root / "pretrained")))
    model_config = load_config(config, ["model.pretrained=null"]).model
    torch.manual_seed(123)
    export_model(CLIPDualEncoder(model_config, tap_layer=1), root / "pretrained", model_config, tap_layer=1)
    run_dir = root / "uninterrupted"
    _launch(config, run_dir)
    return {"root": root, "config": config, "run": run_dir, "cuhk": cuhk}


@pytest.mark.slow
def test_fine_tuning_with_id_and_mlm_logs_each_loss_and_exports_the_encoder_only(finetune_workspace):
    run_dir = finetune_workspace["run"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "step" in r]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    for record in records:
        assert {"loss_sdm", "loss_id", "loss_mlm"} <= set(record)
        assert record["loss"] == pytest.approx(record["loss_sdm"] + record["loss_id"] + record["loss_mlm"], rel=1e-5)
    first, last = records[0], records[-1]
    assert first["loss_mlm"] == pytest.approx(math.log(49408), abs=1.0)  # fresh head: about uniform
    assert first["loss_id"] == pytest.approx(math.log(8), abs=0.5)  # 8 identities, classifier std 0.001
    assert last["loss_mlm"] < first["loss_mlm"] - 0.1  # the MLM head learns the caption vocabulary first
    print(
        "fine-tuning losses:",
        [{k: round(r[k], 3) for k in ("loss", "loss_sdm", "loss_id", "loss_mlm")} for r in records],
    )
    assert [(r["epoch"], r["split"]) for r in lines if "eval" in r] == [
        (e, s) for e in range(2) for s in ("val", "test")
    ]

    # Exported and checkpointed model.safetensors: the dual encoder alone, trained from the pretrained export.
    encoder_keys = set(
        CLIPDualEncoder(load_config(finetune_workspace["config"], ["model.pretrained=null"]).model, 1).state_dict()
    )
    start = load_file(str(finetune_workspace["root"] / "pretrained" / "model.safetensors"))
    for folder in (run_dir / "final", run_dir / "checkpoints" / "epoch0002"):
        weights = load_file(str(folder / "model.safetensors"))
        assert set(weights) == encoder_keys
        assert any(not torch.equal(start[k], weights[k]) for k in start)
    model, _ = load_exported_model(run_dir / "final")
    assert type(model) is CLIPDualEncoder

    # The heads are trained parameters: DeepSpeed's checkpoint holds them, and they change between epochs.
    module_state = _deepspeed_module_state(run_dir / "checkpoints" / "epoch0002")
    after_one_epoch = _deepspeed_module_state(run_dir / "checkpoints" / "epoch0001")
    assert module_state["id_classifier.classifier.weight"].shape == (8, 32)
    for key in HEAD_KEYS:
        assert not torch.equal(module_state[key], after_one_epoch[key]), key

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval",
            "--checkpoint",
            str(run_dir),
            "--dataset",
            "cuhk-pedes",
            "--root",
            str(finetune_workspace["cuhk"]),
            "--out",
            str(finetune_workspace["root"] / "eval.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 0.0 <= json.loads((finetune_workspace["root"] / "eval.json").read_text())["metrics"]["R1"] <= 100.0


@pytest.mark.slow
def test_fine_tuning_with_heads_resumes_to_the_same_parameters(finetune_workspace):
    run_dir = finetune_workspace["root"] / "resumed"
    stop_at = BATCHES_PER_EPOCH + 2  # mid-epoch 1: the heads' weights and Adam moments must come back
    _launch(finetune_workspace["config"], run_dir, f"train.max_steps={stop_at}")
    resumed = _launch(finetune_workspace["config"], run_dir, "--resume", "latest")
    assert f"resumed from epoch 1, batch 2, step {stop_at}" in resumed.stdout

    expected = load_file(str(finetune_workspace["run"] / "final" / "model.safetensors"))
    got = load_file(str(run_dir / "final" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    expected_heads = _deepspeed_module_state(finetune_workspace["run"] / "checkpoints" / "epoch0002")
    got_heads = _deepspeed_module_state(run_dir / "checkpoints" / "epoch0002")
    for name in HEAD_KEYS:
        torch.testing.assert_close(got_heads[name], expected_heads[name], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_mismatched_heads_and_shards_without_identities_stop_with_one_line(finetune_workspace):
    root = finetune_workspace["root"]
    # Resuming a run that trained heads without them: DeepSpeed's strict load names the checkpoint.
    result = _launch(
        finetune_workspace["config"],
        root / "mismatch",
        "loss.id_weight=0",
        "--resume",
        str(finetune_workspace["run"] / "checkpoints" / "epoch0001"),
        expect_rc=2,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds other parameters than this run's model" in errors[0], result.stderr[-2000:]
    assert "id_classifier.classifier.weight" in errors[0]
    assert "Traceback" not in result.stderr

    # Shards without num_identities (LUPerson-style) cannot train the identity classifier.
    shards = root / "no_identities"
    shards.mkdir()
    for shard in (root / "shards").glob("*.tar"):
        (shards / shard.name).symlink_to(shard)
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    del manifest["num_identities"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    result = _launch(finetune_workspace["config"], root / "no_ids", f"data.shards={shards}", expect_rc=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "loss.id_weight" in errors[0] and str(shards / "manifest.json") in errors[0]
