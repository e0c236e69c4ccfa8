"""Typed run configuration: dataclasses whose defaults document the method, loaded from YAML plus
dotted command-line overrides (`train.batch_size=8`). Unknown keys and wrong types fail with the
field's name. The defaults follow the paper and its reference implementation (docs/method.md); where the project
keeps a default of its own (the optimizer and schedule), docs/method.md names the key that restores the reference."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The data sections and ConfigError live at the bottom of the import graph; they are re-exported here so that
# everything above data/ finds the whole schema in one module.
from data.config import AugmentConfig as AugmentConfig
from data.config import ConfigError as ConfigError
from data.config import DataConfig as DataConfig


@dataclass
class ModelConfig:
    """CLIP ViT-B/16 dual encoder. Defaults are the paper's backbone; tiny test models shrink the widths."""

    image_size: tuple[int, int] = (384, 128)  # (H, W) pixels -> 24x8 = 192 patches at patch 16
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    embed_dim: int = 512  # joint embedding space of both projections
    context_length: int = 77  # text tokens including SOT and EOT
    vocab_size: int = 49408  # CLIP BPE; <|mask|> takes id 49405
    pretrained: str | None = None  # local HF CLIP dir or OpenAI ViT-B-16.pt; None = random init
    # How a pretrained square position table (14x14) is resampled to the patch grid (24x8): bilinear as the
    # reference's clip_model.py, or bicubic.
    position_interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.position_interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(
                f"model.position_interpolation must be one of bilinear, bicubic (got {self.position_interpolation!r})"
            )
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(
                f"model.image_size {list(self.image_size)} must be divisible by model.patch_size {self.patch_size}"
            )
        for name in (
            "vision_width",
            "vision_layers",
            "vision_heads",
            "text_width",
            "text_layers",
            "text_heads",
            "embed_dim",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0 (got {getattr(self, name)})")
        if self.vision_width % self.vision_heads or self.text_width % self.text_heads:
            raise ConfigError("model.vision_width / text_width must be divisible by the number of heads")
        if self.context_length < 3:
            raise ConfigError(f"model.context_length must be >= 3 (got {self.context_length})")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols): 24x8 at 384x128."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


FORCE_MASK_RULES = ("most_probable", "first_token")


@dataclass
class NamConfig:
    """Noise-aware masking (docs/method.md)."""

    masking: str = "nam"  # nam | em (uniform masking baseline) | none
    mask_prob: float = 0.15  # p: the mean masking probability over valid tokens
    tap_layer: int = 10  # layer l (1-based count of blocks) whose tokens are scored
    clip: bool = True  # clip r' to [0, 1] as the reference implementation does (paper's Eq. 4 does not)
    kernel: str = "auto"  # token-patch cosine max: auto (Triton on CUDA, else PyTorch) | triton | torch
    # A caption with no drawn token gets one (NAM, EM and IRRA's MLM caption): most_probable = its most probable
    # valid token, corrupted 80/10/10; first_token = the reference's rule, the token at position 1 becomes <|mask|>.
    force_mask: str = "most_probable"
    # Ablation ceiling (engine/method/nam_oracle.py): noise_words.jsonl of the packed synthetic set; its recorded wrong
    # words get r = 1 and every other token r = 0 instead of the model's scores. None = the real scorer.
    oracle_noise: str | None = None

    def __post_init__(self) -> None:
        if self.masking not in ("nam", "em", "none"):
            raise ConfigError(f"nam.masking must be one of nam, em, none (got {self.masking!r})")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ConfigError(f"nam.mask_prob must be in [0, 1] (got {self.mask_prob})")
        if self.tap_layer < 1:
            raise ConfigError(f"nam.tap_layer must be >= 1 (got {self.tap_layer})")
        if self.oracle_noise is not None and self.masking != "nam":
            raise ConfigError(f"nam.oracle_noise needs nam.masking=nam (got {self.masking!r})")
        if self.kernel not in ("auto", "triton", "torch"):
            raise ConfigError(f"nam.kernel must be one of auto, triton, torch (got {self.kernel!r})")
        if self.force_mask not in FORCE_MASK_RULES:
            raise ConfigError(f"nam.force_mask must be one of {', '.join(FORCE_MASK_RULES)} (got {self.force_mask!r})")


@dataclass
class LossConfig:
    """SDM (docs/method.md), plus IRRA's identity and cross-modal MLM losses for fine-tuning, off by default:
    the total is sdm + id_weight * id + mlm_weight * mlm."""

    temperature: float = 0.02  # tau; logit scale 1/tau = 50, fixed
    eps: float = 1e-8
    id_weight: float = 0.0  # identity classification, one Linear(embed_dim, identities) for both modalities; 0 = off
    mlm_weight: float = 0.0  # MLM through a cross-modal encoder; 0 = off (it hurt pretraining: paper Table 2)
    mlm_prob: float = 0.15  # share of a caption's valid tokens drawn for MLM (80% <|mask|>, 10% random, 10% kept)
    mlm_depth: int = 4  # IRRA's cmt_depth: blocks after the text-to-image cross-attention, width model.embed_dim
    # IRRA's released code also feeds the MLM-masked caption to SDM and ID (anosorae/IRRA#13), and its published
    # numbers come from that; false = its paper's design: SDM and ID see the caption that nam.masking gives.
    mlm_shared_caption: bool = True
    # A FILIP-style token-wise loss at the tap layer (engine/method/token_alignment.py). Not part of the method: it only
    # trains the synthetic stand-in for web-pretrained CLIP (configs/synthetic_clip.yaml); 0 = off.
    filip_weight: float = 0.0
    filip_temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0 (got {self.temperature})")
        if self.filip_temperature <= 0:
            raise ConfigError(f"loss.filip_temperature must be > 0 (got {self.filip_temperature})")
        for name in ("id_weight", "mlm_weight", "filip_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, 0 turns it off (got {getattr(self, name)})")
        if not 0.0 < self.mlm_prob <= 1.0:
            raise ConfigError(f"loss.mlm_prob must be in (0, 1] (got {self.mlm_prob})")
        if self.mlm_depth < 1:
            raise ConfigError(f"loss.mlm_depth must be >= 1 (got {self.mlm_depth})")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (docs/method.md, "Training recipe"). The defaults are the project's own
    recipe (AdamW, per-step warmup from 0 then cosine, clipping); configs/pretrain_luperson_mllm.yaml sets the
    reference implementation's values explicitly."""

    # adam: torch.optim.Adam, weight decay as coupled L2 (added to the gradient), as the reference; adamw:
    # torch.optim.AdamW, decoupled decay. Either way one torch optimizer handed to DeepSpeed.
    optimizer: str = "adamw"
    lr: float = 1e-5
    eps: float = 1e-8  # the reference uses 1e-3 (its fp16 weights); parameters with gradient RMS below it step less
    weight_decay: float = 4e-5
    betas: tuple[float, float] = (0.9, 0.999)
    # per_step: warmup and cosine advance every optimizer step; per_epoch: once per epoch, stepped by the trainer
    # at epoch ends, as the reference's LRSchedulerWithWarmup.
    schedule: str = "per_step"
    warmup_fraction: float = 0.05  # per_step: share of all optimizer steps spent warming up linearly
    warmup_epochs: int = 0  # per_epoch: epochs of linear warmup (the reference: 5)
    warmup_start_factor: float = 0.0  # lr multiple where warmup starts (the reference: 0.1)
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # global gradient norm; 0 disables (the reference does not clip)
    head_lr_factor: float = 5.0  # lr multiple for the randomly initialised ID/MLM heads (IRRA's lr_factor)
    bias_lr_factor: float = 1.0  # lr multiple for every bias (IRRA's bias_lr_factor: 2)
    bias_weight_decay: float | None = None  # weight decay of biases; None = optim.weight_decay (IRRA: 0)
    # Every parameter at optim.lr and optim.weight_decay, whatever the factors say: the authors' own fine-tuning
    # script, which comments IRRA's multipliers out.
    single_lr: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optim.optimizer must be one of adam, adamw (got {self.optimizer!r})")
        if self.schedule not in ("per_step", "per_epoch"):
            raise ConfigError(f"optim.schedule must be one of per_step, per_epoch (got {self.schedule!r})")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0 (got {self.lr})")
        if self.eps <= 0:
            raise ConfigError(f"optim.eps must be > 0 (got {self.eps})")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"optim.betas must both be in [0, 1) (got {list(self.betas)})")
        if self.weight_decay < 0 or (self.bias_weight_decay is not None and self.bias_weight_decay < 0):
            raise ConfigError("optim.weight_decay and optim.bias_weight_decay must be >= 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"optim.warmup_fraction must be in [0, 1) (got {self.warmup_fraction})")
        if self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs must be >= 0 (got {self.warmup_epochs})")
        if not 0.0 <= self.warmup_start_factor <= 1.0:
            raise ConfigError(f"optim.warmup_start_factor must be in [0, 1] (got {self.warmup_start_factor})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (got {self.grad_clip})")
        if self.head_lr_factor <= 0:
            raise ConfigError(f"optim.head_lr_factor must be > 0 (got {self.head_lr_factor})")
        if self.bias_lr_factor <= 0:
            raise ConfigError(f"optim.bias_lr_factor must be > 0 (got {self.bias_lr_factor})")


@dataclass
class TrainConfig:
    run_dir: str = "runs/pretrain"  # checkpoints, logs and the exported model go here
    epochs: int = 30
    batch_size: int = 64  # per rank and micro-step; global batch = batch_size x ranks x grad_accum
    grad_accum: int = 1
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0, 1 or 2
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 | fp16_reference (the reference's fp16 weights without an
    # fp32 master copy, to reproduce its runs: engine/runtime/reference_precision.py)
    precision: str = "auto"
    seed: int = 0
    checkpoint_every_steps: int = 0  # also checkpoint every N optimizer steps; 0 = epoch ends only
    keep_checkpoints: int = 3
    max_steps: int = 0  # stop (and checkpoint) after this many optimizer steps; 0 = run all epochs
    log_every_steps: int = 10
    # The ranks agree on "data left on every rank" and "any stop signal" once per this many optimizer steps, holding
    # as many batches ahead; between agreements a step makes no host sync of its own (engine/runtime/step_agreement.py).
    agree_every_steps: int = 16
    # Intra-op CPU threads per rank; 0 = torch's default (the machine's cores). CPU results are bitwise
    # reproducible only at a fixed thread count: reductions split differently over 1 and 2 threads.
    cpu_threads: int = 0
    # A collective waiting longer than this fails the job instead of hanging it (a lost or stuck rank). It must
    # outlast what one rank does while the others wait: rank 0's checkpoint export, the eval ranking.
    collective_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        limits = (
            "epochs",
            "batch_size",
            "grad_accum",
            "keep_checkpoints",
            "log_every_steps",
            "agree_every_steps",
            "collective_timeout_s",
        )
        for name in limits:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0 (got {getattr(self, name)})")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"train.zero_stage must be 0, 1 or 2 (got {self.zero_stage})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16", "fp16_reference"):
            raise ConfigError(
                f"train.precision must be one of auto, fp32, bf16, fp16, fp16_reference (got {self.precision!r})"
            )
        if self.precision == "fp16_reference" and self.zero_stage != 0:
            raise ConfigError(
                "train.precision=fp16_reference steps the fp16 weights themselves, and ZeRO keeps fp32 master copies: "
                f"set train.zero_stage=0 (got {self.zero_stage})"
            )
        if self.cpu_threads < 0:
            raise ConfigError(f"train.cpu_threads must be >= 0, 0 = torch's default (got {self.cpu_threads})")
        if self.checkpoint_every_steps < 0 or self.max_steps < 0:
            raise ConfigError("train.checkpoint_every_steps and train.max_steps must be >= 0")


@dataclass
class EvalConfig:
    """Direct-transfer evaluation during pretraining: every benchmark whose root is set is scored."""

    every_epochs: int = 1  # evaluate after every N epochs; 0 = never during training
    # Each root may also be the URL of such a folder (s3://, http(s)://): fetched into RUN_DIR/eval_cache/<benchmark>.
    cuhk_pedes: str | None = None  # folder with reid_raw.json and imgs/
    icfg_pedes: str | None = None  # folder with ICFG-PEDES.json and imgs/ (no val split: test only)
    rstpreid: str | None = None  # folder with data_captions.json and imgs/
    batch_size: int = 64  # per rank; extraction is split over the ranks

    def __post_init__(self) -> None:
        if self.every_epochs < 0:
            raise ConfigError(f"eval.every_epochs must be >= 0 (got {self.every_epochs})")
        if self.batch_size <= 0:
            raise ConfigError(f"eval.batch_size must be > 0 (got {self.batch_size})")

    @property
    def roots(self) -> dict[str, str]:
        """Benchmark name (as `python -m eval --dataset` spells it) -> root, for the configured ones."""
        named = {"cuhk-pedes": self.cuhk_pedes, "icfg-pedes": self.icfg_pedes, "rstpreid": self.rstpreid}
        return {name: root for name, root in named.items() if root}


@dataclass
class LogConfig:
    """Where rank 0's metrics go besides RUN_DIR/metrics.jsonl (engine/runtime/metrics_log.py)."""

    # wandb: offline (a local run under RUN_DIR/wandb; `wandb sync` uploads it) | online (after `wandb login` or
    # with WANDB_API_KEY) | disabled. WANDB_MODE in the environment wins, as everywhere in wandb.
    wandb: str = "offline"
    wandb_project: str = "tbps-mllm"
    wandb_entity: str | None = None  # team or user; None = the default entity of the logged-in account

    def __post_init__(self) -> None:
        if self.wandb not in ("offline", "online", "disabled"):
            raise ConfigError(f"log.wandb must be one of offline, online, disabled (got {self.wandb!r})")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    nam: NamConfig = field(default_factory=NamConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.nam.tap_layer > min(self.model.vision_layers, self.model.text_layers):
            raise ConfigError(
                f"nam.tap_layer {self.nam.tap_layer} exceeds the encoders' depth "
                f"({self.model.vision_layers} vision, {self.model.text_layers} text layers)"
            )
        if self.loss.mlm_weight > 0 and self.loss.mlm_shared_caption and self.nam.masking != "none":
            raise ConfigError(
                f"loss.mlm_shared_caption feeds the MLM-masked caption to SDM as IRRA's code does, so nam.masking must "
                f"be none (got {self.nam.masking!r}); set loss.mlm_shared_caption=false to keep it"
            )
        if self.train.precision == "fp16_reference" and self.optim.eps < 1e-3:
            raise ConfigError(  # Adam's moments are fp16 there, where eps 1e-8 is zero
                f"train.precision=fp16_reference needs optim.eps >= 1e-3, the reference's Adam eps for its fp16 moments "
                f"(got {self.optim.eps:g}); set optim.eps=1e-3"
            )
        heads = mlm_heads(self.model.embed_dim)
        if self.loss.mlm_weight > 0 and self.model.embed_dim % heads:
            raise ConfigError(
                f"model.embed_dim {self.model.embed_dim} must be divisible by the MLM encoder's {heads} heads "
                "(embed_dim // 64) when loss.mlm_weight > 0"
            )


def mlm_heads(width: int) -> int:
    """IRRA's head count for the cross-modal encoder: one per 64 channels (8 at width 512), at least one."""
    return max(1, width // 64)


FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: object, hint: object, where: str) -> object:
    """Check `value` against a type hint, converting YAML's lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {hint} (got {value!r})")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of fields (got {value!r})")
        return build_section(hint, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values (got {value!r})")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and FLOAT_LITERAL.fullmatch(value.strip()):
        return float(value)  # "1e-3": YAML 1.1, which PyYAML reads, makes a string of an exponent without a dot
    if hint in (int, float, str, bool):
        if isinstance(value, bool) != (hint is bool) or not isinstance(value, hint):
            raise ConfigError(f"{where} must be {hint.__name__} (got {value!r})")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")


def build_section(cls: type, values: dict, where: str = "") -> object:
    """A config dataclass from a mapping (a YAML section, a checkpoint's saved model config), type-checked field by
    field; `where` is the dotted prefix that error messages name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at `path`, then `key.sub=value` overrides (values parsed as YAML)."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})") from None
        _set_dotted(tree, key.strip(), value)
    return build_section(Config, tree)


def config_to_dict(config: object) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON dumps and checkpoints."""

    def plain(value: object) -> object:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
