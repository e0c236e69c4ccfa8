"""Pretraining loop: epoch -> step -> checkpoint -> log, with one step of the paper in `train_step`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import deepspeed
import torch
import yaml
from tqdm import tqdm

from data.caption_stream import PROBLEMS, CaptionSampleStream, make_loader
from data.order import derived_seed
from data.outputs import claim_folder, folder_owner, write_text_atomically
from data.position import DataPosition
from engine.config import Config, EvalConfig, config_to_dict
from engine.method.losses import id_loss, mlm_loss, sdm_loss
from engine.method.mlm import mlm_branch
from engine.method.nam import TokenMasker
from engine.method.noise_table import ShardedNoiseTable
from engine.model.training_model import build_training_model, dual_encoder, parameter_groups
from engine.runtime import collectives, preemption
from engine.runtime.checkpoint import (
    export_model,
    load_checkpoint,
    load_data_positions,
    mark_best,
    resolve_tag_dir,
    save_checkpoint,
)
from engine.runtime.collectives import device
from engine.runtime.data_health import check_epoch_data
from engine.runtime.data_setup import build_caption_stream, load_manifest
from engine.runtime.deepspeed_setup import deepspeed_config, init_distributed, resolve_precision
from engine.runtime.environment import ENVIRONMENT_FILE, run_environment
from engine.runtime.metrics_log import MetricsLog
from engine.runtime.reference_precision import FP16_REFERENCE, cast_like_reference, reference_autocast
from engine.runtime.run_folder import TOOL as RUN_FOLDER_TOOL
from engine.runtime.schedule import build_optimizer, build_scheduler, stepped_per_epoch
from engine.runtime.step_agreement import LookaheadBatches


class InTrainingEvaluator(Protocol):
    """What the loop needs from an evaluator (eval/during_training.py has the real one; the launcher hands it in, so
    the engine never imports eval/)."""

    def due(self, epochs_done: int) -> bool: ...

    def evaluate(self, model: torch.nn.Module, device: torch.device) -> list[dict]: ...


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # micro-batches of that epoch already trained
    world_size: int = 1
    data_workers: int = 1  # data streams per rank: with world_size, the layout a data position is valid for

    def as_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "world_size": self.world_size,
            "data_workers": self.data_workers,
        }


def oracle_for(config: Config):
    """The ablation's oracle noise (nam.oracle_noise), or None: NAM then scores with the model, as the method does."""
    if not config.nam.oracle_noise:
        return None
    from engine.method.nam_oracle import oracle_noise

    return lambda caption_ids, valid: oracle_noise(config, caption_ids, valid)


def train_step(
    ds_engine, batch: dict, config: Config, masker: TokenMasker | None, *, epoch: int, generator: torch.Generator
) -> dict:
    """One step of the paper: NAM-mask the captions, encode, SDM on the global batch (plus IRRA's ID and MLM losses
    where the config turns them on), backward and step, then score T_full for the next epoch's masks."""
    ids, caption_ids = batch["ids"], batch["caption_id"]  # T_full (B, N) and the captions' global ids (B,)
    masked_ids, unscored = masker.mask(ids, caption_ids, epoch=epoch, generator=generator) if masker else (ids, 0)
    score = masker is not None and masker.needs_scores
    target = device()
    dtype = next(ds_engine.module.parameters()).dtype
    heads, mlm_drawn = {}, None
    if config.loss.mlm_weight > 0:
        masked_ids, heads, mlm_drawn = mlm_branch(
            ids,
            masked_ids,
            mask_prob=config.loss.mlm_prob,
            shared_caption=config.loss.mlm_shared_caption,
            generator=generator,
            device=target,
            force_mask=config.nam.force_mask,
        )
    with reference_autocast(config.train.precision):  # fp16_reference only: the reference's fp16 autocast
        images = batch["image"].to(target, dtype=dtype, non_blocking=True)
        out = ds_engine(
            images,
            masked_ids.to(target, non_blocking=True),
            score_ids=ids.to(target, non_blocking=True) if score else None,
            **heads,
        )
        pids = batch["pid"].to(target, non_blocking=True)
        parts = {
            "sdm": sdm_loss(
                collectives.gather_with_grad(out["image_feats"]),
                collectives.gather_with_grad(out["text_feats"]),
                collectives.gather_no_grad(pids),
                temperature=config.loss.temperature,
                eps=config.loss.eps,
            )
        }
        if config.loss.id_weight > 0:  # local batch; DeepSpeed's gradient averaging makes it the global mean
            parts["id"] = id_loss(out["image_logits"], out["text_logits"], pids)
        if config.loss.mlm_weight > 0:
            parts["mlm"] = mlm_loss(out["mlm_logits"], ids.to(target, non_blocking=True), mlm_drawn)
        if config.loss.filip_weight > 0:  # the stand-in for web-pretrained CLIP only, never the method
            from engine.method.token_alignment import filip_loss

            parts["filip"] = filip_loss(
                dual_encoder(ds_engine.module), images, ids.to(target), temperature=config.loss.filip_temperature
            )
        weights = {
            "sdm": 1.0,
            "id": config.loss.id_weight,
            "mlm": config.loss.mlm_weight,
            "filip": config.loss.filip_weight,
        }
        loss = sum(weights[name] * part for name, part in parts.items())
    ds_engine.backward(loss)
    ds_engine.step()
    if score:
        masker.score(caption_ids, ids, out["score_tokens"], out["image_tokens"])
    # Each part before its weight, logged as loss_<name> when there is more than SDM.
    loss_parts = {name: part.detach() for name, part in parts.items()} if len(parts) > 1 else {}
    return {"loss": loss.detach(), "unscored": unscored, "loss_parts": loss_parts}


def train(
    config: Config,
    *,
    resume: str | None = None,
    make_evaluator: Callable[[EvalConfig], InTrainingEvaluator] | None = None,
) -> Path:
    """Runs (or resumes) pretraining; returns the folder of the final exported model. `make_evaluator` builds the
    in-training evaluator once the process group exists (None: no evaluation during training)."""
    init_distributed(collective_timeout_s=config.train.collective_timeout_s, heartbeat=True)
    rank, world = collectives.rank(), collectives.world_size()
    run_dir = Path(config.train.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    torch.manual_seed(config.train.seed)
    if config.train.cpu_threads:  # a fixed count makes CPU runs bitwise reproducible on one machine
        torch.set_num_threads(config.train.cpu_threads)

    manifest = load_manifest(config)
    stream = build_caption_stream(config, manifest, rank=rank, world_size=world)
    position = DataPosition(stream.splits, manifest.caption_id_space, len(PROBLEMS))
    # Every rank must run the same number of steps or the gathers deadlock: the minimum over ranks.
    epoch_batches = [stream.batches_per_epoch(e) for e in range(config.train.epochs)]
    total_steps = sum(epoch_batches) // config.train.grad_accum

    model = build_training_model(config, manifest)  # the dual encoder, plus IRRA's heads when their losses are on
    precision = resolve_precision(config.train.precision)
    if precision == FP16_REFERENCE:  # before the optimizer takes the parameters: it steps them in fp16
        cast_like_reference(model)
    ds_config = deepspeed_config(config, world_size=world)
    optimizer = build_optimizer(parameter_groups(model, config.optim), config.optim)  # torch Adam or AdamW
    scheduler = build_scheduler(optimizer, config.optim, epochs=config.train.epochs, total_steps=total_steps)
    per_epoch = stepped_per_epoch(config.optim)  # then the trainer steps it at epoch ends, not DeepSpeed
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=None if per_epoch else scheduler, config=ds_config
    )
    noise_table = ShardedNoiseTable(manifest.caption_id_space, config.model.context_length)
    masker = TokenMasker(config.nam, noise_table, oracle=oracle_for(config))
    evaluator = make_evaluator(config.eval) if make_evaluator else None
    state = TrainState(world_size=world, data_workers=stream.splits)
    if resume:
        state = restore(
            ds_engine,
            resume,
            noise_table,
            stream,
            position,
            epoch_scheduler=scheduler if per_epoch else None,
        )
    if rank == 0:  # only now: the data, the weights and the checkpoint have all been read without an error
        run_dir.mkdir(parents=True, exist_ok=True)
        if folder_owner(run_dir) is None:
            claim_folder(run_dir, RUN_FOLDER_TOOL)
        write_text_atomically(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
        # what the numbers depend on beyond the config and the seed (CPU, libraries, threads), of this start
        write_text_atomically(run_dir / ENVIRONMENT_FILE, json.dumps(run_environment(), indent=1) + "\n")

    log = MetricsLog(
        run_dir / "metrics.jsonl", enabled=rank == 0, log_config=config.log, run_config=config_to_dict(config)
    )
    if rank == 0:
        print(
            f"training: {world} rank(s), {epoch_batches[0]} batches/epoch of {config.train.batch_size} per rank "
            f"(global batch {config.train.batch_size * world * config.train.grad_accum}), {total_steps} optimizer "
            f"steps, masking={config.nam.masking}, precision={precision}",
            flush=True,
        )

    def checkpoint(tag: str) -> None:
        epoch_schedule = {"epoch_lr_scheduler": scheduler.state_dict()} if per_epoch else {}
        save_checkpoint(
            ds_engine,
            checkpoint_dir,
            tag=tag,
            train_state=state.as_dict() | epoch_schedule,
            noise_table=noise_table,
            model_config=config.model,
            tap_layer=config.nam.tap_layer,
            keep=config.train.keep_checkpoints,
            data_state=position.state_dict(),
        )

    try:
        for epoch in range(state.epoch, config.train.epochs):
            stream.set_epoch(epoch, position.start())
            stopped = run_epoch(
                ds_engine,
                stream,
                config,
                masker,
                state,
                position,
                scheduler=scheduler,
                batches_per_epoch=epoch_batches[epoch],
                log=log,
                checkpoint=checkpoint,
            )
            if stopped:
                return checkpoint_dir
            problems = log_data_problems(log, epoch, position)
            check_epoch_data(  # an epoch on nothing, or on too much damage, stops the run before final/
                epoch,
                problems,
                trained=state.batches_done * config.train.batch_size * world,
                manifest=manifest,
                max_damaged_share=config.data.max_damaged_share,
            )
            if config.nam.masking == "nam" and epoch + 1 < config.train.epochs:
                started = time.perf_counter()
                noise_table.end_epoch(stream.caption_ids(epoch + 1))  # scores travel to whoever reads them next
                log.write({"epoch": epoch, "noise_exchange_s": time.perf_counter() - started})
            state.epoch, state.batches_done = epoch + 1, 0
            if per_epoch:
                scheduler.step()  # the next epoch's lr, before the checkpoint records it
            position.new_epoch()
            tag = f"epoch{epoch + 1:04d}"
            checkpoint(tag)
            if evaluator and evaluator.due(epoch + 1):
                with reference_autocast(precision):  # the fp16 weights of fp16_reference take fp16 inputs
                    evaluate(evaluator, ds_engine, log, checkpoint_dir=checkpoint_dir, epoch=epoch, tag=tag)
        final_dir = run_dir / "final"
        if rank == 0:
            export_model(dual_encoder(ds_engine.module), final_dir, config.model, config.nam.tap_layer)
        collectives.barrier()
        return final_dir
    finally:
        log.close()


def evaluate(
    evaluator: InTrainingEvaluator, ds_engine, log: MetricsLog, *, checkpoint_dir: Path, epoch: int, tag: str
) -> None:
    """Scores the configured benchmarks (all ranks extract); rank 0 logs and keeps best.json on validation R1."""
    for record in evaluator.evaluate(dual_encoder(ds_engine.module), device()):
        improved = record["selects_best"] and mark_best(checkpoint_dir, tag, record)
        log.write({"epoch": epoch, "tag": tag, **record, "new_best": improved})
        title = f"eval after {epoch + 1} epochs: {record['eval']} {record['split']}"
        print(
            f"{title}: R1 {record['R1']:.2f} R5 {record['R5']:.2f} mAP {record['mAP']:.2f}"
            + (" (best so far)" if improved else ""),
            flush=True,
        )


def restore(
    ds_engine,
    path: str | Path,
    noise_table: ShardedNoiseTable,
    stream: CaptionSampleStream,
    position: DataPosition,
    *,
    epoch_scheduler=None,
) -> TrainState:
    """Loads a checkpoint. On the layout that wrote it (world size, data workers per rank) every data
    worker continues at its saved position; on another layout the rest of the interrupted epoch (the
    captions no rank trained on yet) runs in a new order, and the noise table is re-read for it."""
    tag_dir = resolve_tag_dir(path)
    restored = load_checkpoint(ds_engine, tag_dir, noise_table)
    world, rank = collectives.world_size(), collectives.rank()
    old_world, old_workers = restored["world_size"], restored.get("data_workers")
    same_layout = old_world == world and old_workers == stream.splits
    state = TrainState(restored["epoch"], restored["batches_done"] if same_layout else 0, world, stream.splits)
    if epoch_scheduler is not None:  # DeepSpeed restores a per-step scheduler itself; the optimizer has the lr
        if "epoch_lr_scheduler" in restored:
            epoch_scheduler.load_state_dict(restored["epoch_lr_scheduler"])
        else:  # written with a per-step schedule: start this one at the checkpoint's epoch
            epoch_scheduler.last_epoch = state.epoch - 1
            epoch_scheduler.step()
    saved = load_data_positions(tag_dir, [rank] if same_layout else list(range(old_world)))
    if same_layout and saved[0]:
        position.load_state_dict(saved[0])
    elif all(saved):
        position.load_other_layout(saved)
    if old_world != world:
        noise_table.refresh(stream.caption_ids(state.epoch))
    if rank == 0:
        print(
            f"resumed from epoch {state.epoch}, batch {state.batches_done}, step {ds_engine.global_steps}", flush=True
        )
        if not same_layout and restored["batches_done"]:
            print(
                f"note: the checkpoint was written by {old_world} rank(s) x {old_workers} data worker(s), this run "
                f"has {world} x {stream.splits}: the rest of epoch {state.epoch} runs in a new order, leaving out "
                "the captions already trained on",
                flush=True,
            )
    return state


def run_epoch(
    ds_engine,
    stream: CaptionSampleStream,
    config: Config,
    masker: TokenMasker,
    state: TrainState,
    position: DataPosition,
    *,
    scheduler,
    batches_per_epoch: int,
    log: MetricsLog,
    checkpoint,
) -> bool:
    """Trains the rest of one epoch; returns True when train.max_steps stopped the run."""
    rank = collectives.rank()
    epoch = state.epoch
    items = iter(preemption.shield_data_workers(make_loader(stream, num_workers=config.data.num_workers)))
    progress = tqdm(
        total=batches_per_epoch,
        initial=state.batches_done,
        desc=f"epoch {epoch}",
        disable=rank != 0 or not sys.stderr.isatty(),
        mininterval=5.0,
        leave=False,
    )
    window = LossWindow()

    def log_window() -> None:
        lr = scheduler.get_last_lr()[0] if hasattr(scheduler, "get_last_lr") else scheduler.get_lr()[0]
        sums = window.flush(batch_size=config.train.batch_size)
        record = {"epoch": epoch, "batch": state.batches_done, "step": ds_engine.global_steps, "loss": sums.pop("loss")}
        record |= {"lr": lr, **sums}
        log.write(record)
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{record['samples_per_s']:.1f}")
        if rank == 0:
            tqdm.write(json.dumps(record))

    # One agreement every agree_every_steps optimizer steps: data left on every rank, and any stop signal.
    block = config.train.agree_every_steps * config.train.grad_accum
    held = LookaheadBatches(items, position, limit=batches_per_epoch - state.batches_done, lookahead=block)
    left, data_ended = 0, False  # batches every rank still trains before the next agreement; a rank's data ended
    while state.batches_done < batches_per_epoch:
        if left == 0:
            if data_ended:
                break
            agreed = held.agree(min(block, batches_per_epoch - state.batches_done), before=masker.noise_table.settle)
            step = ds_engine.global_steps
            if agreed.stop_signals:  # SIGUSR1/SIGTERM on any rank: all stop here, after the same optimizer step
                checkpoint(f"step{step:08d}")
                progress.close()
                log.write({"epoch": epoch, "stopped_after_step": step, "signals": agreed.stop_signals})
                raise preemption.StoppedBySignal(agreed.stop_signals, step, f"step{step:08d}")
            if agreed.halted_rank is not None:  # a rank's remote store stayed down: all stop here, losing nothing
                checkpoint(f"step{step:08d}")
                progress.close()
                log.write({"epoch": epoch, "stopped_after_step": step, "data_unreachable_on_rank": agreed.halted_rank})
                reason = held.halted or f"rank {agreed.halted_rank} could not fetch its shards"
                raise preemption.StoppedOnDataOutage(reason, step, f"step{step:08d}", here=held.halted is not None)
            left, data_ended = agreed.batches, agreed.data_ended
            if left == 0:
                break
        batch = held.next_batch()
        left -= 1
        index = state.batches_done
        generator = torch.Generator().manual_seed(derived_seed(config.train.seed, epoch, index, rank))
        result = train_step(ds_engine, batch, config, masker, epoch=epoch, generator=generator)
        state.batches_done = index + 1
        held.refill()
        window.add(result)
        progress.update(1)
        boundary = ds_engine.is_gradient_accumulation_boundary() or state.batches_done == batches_per_epoch
        step = ds_engine.global_steps
        if state.batches_done % config.train.log_every_steps == 0 or state.batches_done == batches_per_epoch:
            log_window()
        if boundary and config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
            checkpoint(f"step{step:08d}")
        if boundary and config.train.max_steps and step >= config.train.max_steps:
            checkpoint(f"step{step:08d}")
            progress.close()
            return True
    if state.batches_done < batches_per_epoch:  # damaged data left a rank short: all ranks end the epoch together
        held.record_leftovers()
        if rank == 0:
            print(f"epoch {epoch}: a rank ran out of data after {state.batches_done} batches", flush=True)
        if window.batches:
            log_window()
    else:
        held.record_trailing_tails()
    progress.close()
    return False


class LossWindow:
    """The sums of one log interval. The loss stays on the device until `flush`, the one host sync."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.parts, self.batches, self.unscored, self.start = 0.0, {}, 0, 0, time.perf_counter()

    def add(self, result: dict) -> None:
        self.loss = self.loss + result["loss"]
        self.parts = {name: self.parts.get(name, 0.0) + part for name, part in result["loss_parts"].items()}
        self.batches += 1
        self.unscored += result["unscored"]

    def flush(self, *, batch_size: int) -> dict:
        """Means over every rank's batches of the interval (a collective), then a fresh window."""
        loss_sum, count, unscored, *part_sums = collectives.all_reduce_sum(
            [float(self.loss), self.batches, self.unscored, *map(float, self.parts.values())]  # host sync
        )
        record = {
            "loss": loss_sum / max(count, 1),
            "samples_per_s": count * batch_size / max(time.perf_counter() - self.start, 1e-9),
            "unscored_captions": int(unscored),
            **{f"loss_{name}": total / max(count, 1) for name, total in zip(self.parts, part_sums, strict=True)},
        }
        self.reset()
        return record


def log_data_problems(log: MetricsLog, epoch: int, position: DataPosition) -> dict[str, int]:
    """Per-epoch counts of skipped (and converted) samples over all ranks, in the log and on stdout."""
    totals = collectives.all_reduce_sum([*position.problems.tolist(), position.dropped])  # host sync: once per epoch
    counts = {kind: int(n) for kind, n in zip(PROBLEMS, totals, strict=False)}
    log.write({"epoch": epoch, "data_problems": counts, "partial_batch_samples_dropped": int(totals[-1])})
    if collectives.rank() == 0 and any(counts.values()):
        found = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
        print(f"epoch {epoch}: data problems skipped and counted: {found}", flush=True)
    return counts
