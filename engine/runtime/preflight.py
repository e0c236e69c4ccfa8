"""Everything `launcher.train` checks before a process group exists and before it writes anything: the machine
against the config, the data against the batch size, the weights, the run folder and the checkpoint to resume.
Each failure is one line naming the setting or file; rank 0 alone moves an old run aside (--overwrite)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from data.manifest import ShardError
from engine.config import Config, ConfigError
from engine.runtime.run_folder import check_compatible, prepare_run_folder, resume_checkpoint, world_size


def check_machine(config: Config) -> None:
    """Options that need CUDA fail here, in one line, instead of deep inside the first step."""
    if torch.cuda.is_available():
        return
    if config.nam.kernel == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            "nam.kernel=triton needs a CUDA GPU (or TRITON_INTERPRET=1, Triton's slow CPU interpreter); "
            "use nam.kernel=auto or torch on this machine"
        )
    if config.train.precision in ("fp16", "fp16_reference"):
        raise ConfigError(
            f"train.precision={config.train.precision} needs a CUDA GPU; use train.precision=auto or fp32 on this machine"
        )


def check_paths(config: Config) -> None:
    if config.model.pretrained and not Path(config.model.pretrained).exists():
        raise ConfigError(f"model.pretrained {config.model.pretrained} does not exist")
    # A missing eval.* benchmark root is not an error: training warns once and leaves that benchmark out.


def check_data(config: Config, *, world: int) -> None:
    """The manifest reads, and every rank gets at least one batch of every epoch from it."""
    from engine.runtime.data_setup import (  # the data pipeline's imports only once the config is good
        build_caption_stream,
        load_manifest,
    )

    manifest = load_manifest(config)
    stream = build_caption_stream(config, manifest, rank=0, world_size=world)
    for epoch in range(config.train.epochs):
        batches = stream.batches_per_rank(epoch)
        if min(batches) > 0:
            continue
        rank = batches.index(0)
        units = stream.units_per_worker(epoch)
        unit = "images" if config.data.sampling == "one_caption_per_image" else "captions"
        shards = len(stream.shard_indices(epoch, rank))
        split = " + ".join(map(str, units[rank]))
        raise ShardError(
            f"rank {rank} of {world} gets no full batch in epoch {epoch}: {sum(units[rank])} {unit} from {shards} of "
            f"the {len(manifest.shards)} shards in {manifest.root} ({split} across its {stream.splits} data "
            f"worker(s)), and each worker needs train.batch_size={config.train.batch_size}; lower train.batch_size "
            "or data.num_workers, use fewer ranks, or repack into more, evenly sized shards"
        )


def check_run_dir_apart_from_data(run_dir: Path, shards: Path) -> None:
    """Training writes into its run folder: never the shards it reads, a folder inside them, or one holding them."""
    run, data = run_dir.resolve(), shards.resolve()
    if run == data or data in run.parents or run in data.parents:
        raise ConfigError(f"train.run_dir {run_dir} overlaps data.shards {shards}; choose a run folder outside it")


def check_before_training(config: Config, *, resume: str | None, overwrite: bool) -> str | None:
    """Runs every check; returns the checkpoint folder to resume from (None: a fresh start)."""
    rank, world = int(os.environ.get("RANK", "0") or 0), world_size()
    run_dir = Path(config.train.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.run_dir {run_dir} is an existing file; choose a folder")
    check_run_dir_apart_from_data(run_dir, Path(config.data.shards))
    check_machine(config)
    check_paths(config)
    tag_dir = resume_checkpoint(resume, run_dir, announce=rank == 0)
    if tag_dir is not None:
        check_compatible(tag_dir, config)
    check_data(config, world=world)
    prepare_run_folder(run_dir, resume=resume, overwrite=overwrite, rank=rank)  # last: it may move the old run
    return None if tag_dir is None else str(tag_dir)
