"""Pretraining loop: epoch -> step -> checkpoint -> log, with one step of the paper in `train_step`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import yaml
from tqdm import tqdm

from data.dataset import CaptionSampleStream, make_loader
from data.manifest import Manifest
from engine import collectives
from engine.checkpoint import export_model, load_checkpoint, mark_best, resolve_tag_dir, save_checkpoint
from engine.config import Config, config_to_dict
from engine.deepspeed_setup import deepspeed_config, device, init_distributed
from engine.losses import sdm_loss
from engine.model import build_model
from engine.nam import apply_mask, mask_probabilities, uniform_probabilities, valid_token_mask
from engine.noise_table import ShardedNoiseTable
from eval.during_training import TrainingEvaluator
from kernels import token_patch_max_cosine


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # micro-batches of that epoch already trained
    world_size: int = 1

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "world_size": self.world_size}


def masked_captions(
    config: Config,
    ids: torch.Tensor,
    caption_ids: torch.Tensor,
    noise_table: ShardedNoiseTable,
    *,
    epoch: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, int]:
    """T_nam for this step, and how many captions fell back to uniform masking for lack of scores."""
    valid = valid_token_mask(ids)
    if config.nam.masking == "none":
        return ids, 0
    probabilities = uniform_probabilities(valid, config.nam.mask_prob)
    unscored = 0
    if config.nam.masking == "nam" and epoch > 0:  # epoch 0 has no scores yet: r' = p
        noise, known = noise_table.lookup(caption_ids, valid)
        scored = mask_probabilities(noise, valid, config.nam.mask_prob, clip=config.nam.clip)
        probabilities = torch.where(known.unsqueeze(1), scored, probabilities)
        unscored = int((~known).sum())  # host sync: CPU tensors here
    masked, _ = apply_mask(ids, probabilities, valid, generator)
    return masked, unscored


def train_step(
    engine, batch: dict, config: Config, noise_table: ShardedNoiseTable, *, epoch: int, generator: torch.Generator
) -> dict:
    """NAM-mask the captions, encode, SDM on the global batch, backward and step, then score T_full."""
    ids, caption_ids = batch["ids"], batch["caption_id"]
    masked_ids, unscored = masked_captions(config, ids, caption_ids, noise_table, epoch=epoch, generator=generator)
    score = config.nam.masking == "nam"
    target = device()
    dtype = next(engine.module.parameters()).dtype
    out = engine(
        batch["image"].to(target, dtype=dtype, non_blocking=True),
        masked_ids.to(target, non_blocking=True),
        score_ids=ids.to(target, non_blocking=True) if score else None,
    )
    loss = sdm_loss(
        collectives.gather_with_grad(out["image_feats"]),
        collectives.gather_with_grad(out["text_feats"]),
        collectives.gather_no_grad(batch["pid"].to(target)),
        temperature=config.loss.temperature,
        eps=config.loss.eps,
    )
    engine.backward(loss)
    engine.step()
    if score:
        valid = valid_token_mask(ids).to(target)
        similarity = token_patch_max_cosine(out["score_tokens"], out["image_tokens"], valid, impl=config.nam.kernel)
        noise_table.record(caption_ids, 1.0 - similarity, valid)  # r = 1 - max_j s_ij, used next epoch
    return {"loss": loss.detach(), "unscored": unscored}


class MetricsLog:
    """Rank 0 writes one JSON object per line to RUN_DIR/metrics.jsonl."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.handle = path.open("a") if enabled else None

    def write(self, record: dict) -> None:
        if self.handle:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def train(config: Config, *, resume: str | None = None) -> Path:
    """Runs (or resumes) pretraining; returns the folder of the final exported model."""
    init_distributed()
    rank, world = collectives.rank(), collectives.world_size()
    run_dir = Path(config.train.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    torch.manual_seed(config.train.seed)

    manifest = Manifest.load(config.data.shards)
    stream = CaptionSampleStream(
        manifest,
        rank=rank,
        world_size=world,
        num_workers=config.data.num_workers,
        image_size=config.model.image_size,
        augment=config.data.augment,
        context_length=config.model.context_length,
        seed=config.train.seed,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    # Every rank must run the same number of steps or the gathers deadlock: the minimum over ranks.
    epoch_batches = [stream.batches_per_epoch(config.train.batch_size, e) for e in range(config.train.epochs)]
    if min(epoch_batches) == 0:
        raise ValueError(f"{manifest.root} gives a rank fewer than train.batch_size={config.train.batch_size} captions")
    total_steps = sum(epoch_batches) // config.train.grad_accum

    model = build_model(config.model, tap_layer=config.nam.tap_layer)
    ds_config = deepspeed_config(config, total_steps=total_steps, world_size=world)
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    noise_table = ShardedNoiseTable(manifest.caption_id_space, config.model.context_length)
    evaluator = TrainingEvaluator(config.eval)
    state = TrainState(world_size=world)
    if resume:
        state = restore(engine, resume if resume != "latest" else checkpoint_dir, noise_table, stream)

    log = MetricsLog(run_dir / "metrics.jsonl", enabled=rank == 0)
    if rank == 0:
        precision = "bf16" if ds_config["bf16"]["enabled"] else "fp16" if ds_config["fp16"]["enabled"] else "fp32"
        print(
            f"training: {world} rank(s), {epoch_batches[0]} batches/epoch of {config.train.batch_size} per rank "
            f"(global batch {config.train.batch_size * world * config.train.grad_accum}), {total_steps} optimizer "
            f"steps, masking={config.nam.masking}, precision={precision}",
            flush=True,
        )

    def checkpoint(tag: str) -> None:
        save_checkpoint(
            engine,
            checkpoint_dir,
            tag=tag,
            train_state=state.as_dict(),
            noise_table=noise_table,
            model_config=config.model,
            tap_layer=config.nam.tap_layer,
            keep=config.train.keep_checkpoints,
        )

    try:
        for epoch in range(state.epoch, config.train.epochs):
            stream.set_epoch(epoch)
            stopped = run_epoch(
                engine,
                stream,
                config,
                noise_table,
                state,
                scheduler=scheduler,
                batches_per_epoch=epoch_batches[epoch],
                log=log,
                checkpoint=checkpoint,
            )
            if stopped:
                return checkpoint_dir
            if config.nam.masking == "nam" and epoch + 1 < config.train.epochs:
                started = time.perf_counter()
                noise_table.end_epoch(stream.caption_ids(epoch + 1))  # scores travel to whoever reads them next
                log.write({"epoch": epoch, "noise_exchange_s": time.perf_counter() - started})
            state.epoch, state.batches_done = epoch + 1, 0
            tag = f"epoch{epoch + 1:04d}"
            checkpoint(tag)
            if evaluator.due(epoch + 1):
                evaluate(evaluator, engine, log, checkpoint_dir=checkpoint_dir, epoch=epoch, tag=tag)
        final_dir = run_dir / "final"
        if rank == 0:
            export_model(engine.module, final_dir, config.model, config.nam.tap_layer)
        collectives.barrier()
        return final_dir
    finally:
        log.close()


def evaluate(
    evaluator: TrainingEvaluator, engine, log: MetricsLog, *, checkpoint_dir: Path, epoch: int, tag: str
) -> None:
    """Scores the configured benchmarks (all ranks extract); rank 0 logs and keeps best.json on validation R1."""
    for record in evaluator.evaluate(engine.module, device()):
        improved = record["selects_best"] and mark_best(checkpoint_dir, tag, record)
        log.write({"epoch": epoch, "tag": tag, **record, "new_best": improved})
        title = f"eval after {epoch + 1} epochs: {record['eval']} {record['split']}"
        print(
            f"{title}: R1 {record['R1']:.2f} R5 {record['R5']:.2f} mAP {record['mAP']:.2f}"
            + (" (best so far)" if improved else ""),
            flush=True,
        )


def restore(engine, path: str | Path, noise_table: ShardedNoiseTable, stream: CaptionSampleStream) -> TrainState:
    """Loads a checkpoint; on another world size the interrupted epoch restarts and the table is re-read."""
    restored = load_checkpoint(engine, resolve_tag_dir(path), noise_table)
    world = collectives.world_size()
    same_world = restored["world_size"] == world
    state = TrainState(restored["epoch"], restored["batches_done"] if same_world else 0, world)
    if not same_world:
        noise_table.refresh(stream.caption_ids(state.epoch))
    if collectives.rank() == 0:
        print(f"resumed from epoch {state.epoch}, batch {state.batches_done}, step {engine.global_steps}", flush=True)
    return state


def run_epoch(
    engine,
    stream: CaptionSampleStream,
    config: Config,
    noise_table: ShardedNoiseTable,
    state: TrainState,
    *,
    scheduler,
    batches_per_epoch: int,
    log: MetricsLog,
    checkpoint,
) -> bool:
    """Trains the rest of one epoch; returns True when train.max_steps stopped the run."""
    rank = collectives.rank()
    epoch = state.epoch
    loader = make_loader(stream, batch_size=config.train.batch_size, num_workers=config.data.num_workers)
    progress = tqdm(
        total=batches_per_epoch,
        initial=state.batches_done,
        desc=f"epoch {epoch}",
        disable=rank != 0 or not sys.stderr.isatty(),
        mininterval=5.0,
        leave=False,
    )
    window_loss, window_batches, window_unscored, window_start = 0.0, 0, 0, time.perf_counter()
    for index, batch in enumerate(loader):
        if index >= batches_per_epoch:
            break
        if index < state.batches_done:  # resuming mid-epoch: the same batches in the same order, skipped
            continue
        generator = torch.Generator().manual_seed(hash((config.train.seed, epoch, index, rank)) & 0x7FFF_FFFF)
        result = train_step(engine, batch, config, noise_table, epoch=epoch, generator=generator)
        state.batches_done = index + 1
        window_loss = window_loss + result["loss"]  # stays on the device; synced only at log points
        window_batches += 1
        window_unscored += result["unscored"]
        progress.update(1)
        boundary = engine.is_gradient_accumulation_boundary() or state.batches_done == batches_per_epoch
        step = engine.global_steps
        if state.batches_done % config.train.log_every_steps == 0 or state.batches_done == batches_per_epoch:
            # host sync: once per log interval
            loss_sum, count, unscored = collectives.all_reduce_sum(
                [float(window_loss), window_batches, window_unscored]
            )
            elapsed = time.perf_counter() - window_start
            record = {
                "epoch": epoch,
                "batch": state.batches_done,
                "step": step,
                "loss": loss_sum / max(count, 1),
                "lr": scheduler.get_last_lr()[0] if hasattr(scheduler, "get_last_lr") else scheduler.get_lr()[0],
                "samples_per_s": count * config.train.batch_size / max(elapsed, 1e-9),
                "unscored_captions": int(unscored),
            }
            log.write(record)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if rank == 0:
                tqdm.write(json.dumps(record))
            window_loss, window_batches, window_unscored, window_start = 0.0, 0, 0, time.perf_counter()
        if boundary and config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
            checkpoint(f"step{step:08d}")
        if boundary and config.train.max_steps and step >= config.train.max_steps:
            checkpoint(f"step{step:08d}")
            progress.close()
            return True
    progress.close()
    return False
