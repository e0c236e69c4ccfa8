"""The captioning loop: this rank's images, minus what the part files already hold, in fixed batches through the
model, each batch appended as it finishes; the merge into OUT once every rank has gone through its images.

Data parallel without a process group: rank r of W takes the images whose file-name hash is r mod W, so W
processes started by torchrun, the deepspeed launcher or by hand (RANK / WORLD_SIZE) split the work, and a rerun
with another W still skips everything done. Batches are fixed slices of the rank's sorted image list, so a
resumed run forms the same batches as an uninterrupted one (sampling, seeded per batch, then repeats too)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from data.caption_files import DIRTY_CAPTION
from data.captioning.images import ImageRef, list_folder, list_shards, rank_of
from data.captioning.instructions import DEFAULT_INSTRUCTIONS, MODES, CaptioningError, load_instructions
from data.captioning.model import DTYPES, Decoding, LocalCaptioner
from data.captioning.store import CaptionStore, MergeSummary

ABORT_AFTER_FAILURES = 16  # generation failing this many times before any success means a setup problem


@dataclass(frozen=True)
class CaptionJob:
    out: Path  # the caption JSON to write, e.g. Td-qwen2vl.json (data.pack treats Td-* as dynamic)
    model: Path  # a local transformers folder of an image-text-to-text model
    mode: str  # static | dynamic
    images: Path | None = None  # a folder of images ...
    shards: Path | None = None  # ... or a packed shard folder (manifest.json + tar shards)
    instructions: Path = DEFAULT_INSTRUCTIONS  # static / dynamic instructions and the template bank
    seed: int = 0  # with the file name, picks each image's template (and seeds sampling)
    batch_size: int = 8  # images per generate call
    decoding: Decoding = field(default_factory=Decoding)
    device: str = "auto"  # auto = this rank's GPU if any, else cpu
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    rank: int = 0
    world_size: int = 1
    retry_failed: bool = False  # caption again the images recorded as failed
    max_images: int | None = None  # stop after this many (a trial run); the rest waits for a rerun
    progress: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise CaptioningError(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if (self.images is None) == (self.shards is None):
            raise CaptioningError("give exactly one of --images DIR and --shards DIR")
        if self.batch_size <= 0:
            raise CaptioningError(f"batch_size must be > 0 (got {self.batch_size})")
        if not 0 <= self.rank < self.world_size:
            raise CaptioningError(
                f"rank must be in [0, world_size) (got rank {self.rank}, world size {self.world_size})"
            )
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise CaptioningError(f"dtype must be auto or one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.max_images is not None and self.max_images <= 0:
            raise CaptioningError(f"max_images must be > 0 (got {self.max_images})")

    def settings(self, instructions_sha256: str) -> dict:
        """What decides the captions; batch size, device, dtype and world size only change the numerics."""
        source = self.images if self.images is not None else self.shards
        return {
            "mode": self.mode,
            "model": str(self.model.resolve()),
            "source": str(source.resolve()),
            "instructions_sha256": instructions_sha256,
            "seed": self.seed,
            **asdict(self.decoding),
        }


@dataclass(frozen=True)
class RunSummary:
    assigned: int  # this rank's images
    done_before: int  # captioned by earlier runs
    captioned: int
    failed: int
    flagged: int  # captions of this run that still hold a [slot] or <markup>
    seconds: float  # generation time, model loading excluded
    complete: bool  # this rank went through all its images (stopped by --max-images otherwise)
    merged: MergeSummary | None  # set on the rank that found every rank complete and merged

    @property
    def images_per_second(self) -> float:
        return (self.captioned + self.failed) / self.seconds if self.seconds > 0 else 0.0


def _batch_seed(seed: int, names: list[str]) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{names[0]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63)


class _Captioning:
    """One rank's pass: reads, generates, retries a failed batch image by image, records every outcome."""

    def __init__(self, job: CaptionJob, captioner: LocalCaptioner, instructions, writer):
        self.job, self.captioner, self.instructions, self.writer = job, captioner, instructions, writer
        self.captioned = self.failed = self.flagged = 0
        self.model_has_worked = False
        self.failures_before_first_caption = 0
        # Generation failures before the model has ever worked may be a setup problem, not the images': they are
        # written once the model works (or the pass ends), and dropped if the run stops on them.
        self.unconfirmed: list[dict] = []

    def run_batch(self, refs: list[ImageRef]) -> None:
        captions, failures, ready = [], [], []
        for ref in refs:
            template = self.instructions.template_id(ref.name, self.job.seed) if self.job.mode == "dynamic" else None
            try:
                ready.append((ref, template, ref.read()))
            except Exception as error:  # any unreadable image is recorded, not fatal
                failures.append(_failure(ref, template, "read", error))
        if ready:
            for (ref, template, _), outcome in zip(ready, self._generate(ready), strict=True):
                if isinstance(outcome, Exception):
                    failed = _failure(ref, template, "generate", outcome)
                    (failures if self.model_has_worked else self.unconfirmed).append(failed)
                elif not outcome:
                    failures.append(
                        {"image": ref.name, "template": template, "stage": "empty", "reason": "empty output"}
                    )
                else:
                    dirty = DIRTY_CAPTION.search(outcome) is not None
                    captions.append({"image": ref.name, "caption": outcome, "template": template, "dirty": dirty})
        if self.model_has_worked:
            failures, self.unconfirmed = self.unconfirmed + failures, []
        self._record(captions, failures)

    def finish(self) -> None:
        self._record([], self.unconfirmed)
        self.unconfirmed = []

    def _record(self, captions: list[dict], failures: list[dict]) -> None:
        self.writer.write(captions, failures)
        self.captioned += len(captions)
        self.failed += len(failures)
        self.flagged += sum(row["dirty"] for row in captions)

    @property
    def attempted(self) -> int:
        return self.captioned + self.failed + len(self.unconfirmed)

    def _generate(self, ready: list) -> list:
        """Captions for the batch; if the batch fails, each image alone, so one bad image costs only itself."""
        try:
            return self._call([item[2] for item in ready], [item[:2] for item in ready])
        except Exception as error:  # recorded per image below
            if len(ready) == 1:
                self._count_generation_failure(error)
                return [error]
        outcomes = []
        for item in ready:
            try:
                outcomes += self._call([item[2]], [item[:2]])
            except Exception as error:  # recorded as this image's failure
                self._count_generation_failure(error)
                outcomes.append(error)
        return outcomes

    def _call(self, images, refs_and_templates) -> list[str]:
        prompts = [self.instructions.prompt(self.job.mode, template) for _, template in refs_and_templates]
        seed = _batch_seed(self.job.seed, [ref.name for ref, _ in refs_and_templates])
        texts = self.captioner.caption(images, prompts, decoding=self.job.decoding, seed=seed)
        self.model_has_worked = True
        return texts

    def _count_generation_failure(self, error: Exception) -> None:
        if self.model_has_worked:  # the model works, so it is this image that fails: record it and go on
            return
        self.failures_before_first_caption += 1
        if self.failures_before_first_caption >= ABORT_AFTER_FAILURES:
            raise CaptioningError(f"generation failed on the first {ABORT_AFTER_FAILURES} images: {_reason(error)}")


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _failure(ref: ImageRef, template: int | None, stage: str, error: Exception) -> dict:
    return {"image": ref.name, "template": template, "stage": stage, "reason": _reason(error)}


def caption(job: CaptionJob) -> RunSummary:
    instructions = load_instructions(job.instructions)
    refs = list_folder(job.images) if job.images is not None else list_shards(job.shards)
    store = CaptionStore(job.out)
    store.check_settings(job.settings(instructions.sha256))
    store.clear_done(job.rank)
    mine = [ref for ref in refs if rank_of(ref.name, job.world_size) == job.rank]
    captioned_before, failed_before = store.finished_names()
    skip = captioned_before if job.retry_failed else captioned_before | failed_before
    pending = {ref.name for ref in mine if ref.name not in skip}
    budget = len(pending) if job.max_images is None else min(len(pending), job.max_images)
    seconds, complete, work = 0.0, True, None
    if budget:
        captioner = LocalCaptioner.load(job.model, device=job.device, dtype=job.dtype)
        writer = store.writer(job.rank)
        work = _Captioning(job, captioner, instructions, writer)
        started = time.perf_counter()
        show = job.progress and job.rank == 0
        progress = tqdm(total=budget, unit="img", desc=f"captioning ({job.mode})", disable=not show, smoothing=0.1)
        try:
            for start in range(0, len(mine), job.batch_size):
                batch = [ref for ref in mine[start : start + job.batch_size] if ref.name in pending]
                batch = batch[: budget - work.attempted]
                if batch:
                    work.run_batch(batch)
                    progress.update(len(batch))
                    progress.set_postfix(failed=work.failed, flagged=work.flagged, refresh=False)
                if work.attempted >= budget:
                    break
            work.finish()
        finally:
            progress.close()
            writer.close()
        seconds = time.perf_counter() - started
        complete = budget == len(pending)
    merged = None
    if complete:
        store.mark_done(job.rank, job.world_size)
        if store.all_done(job.world_size):
            merged = store.merge()
    return RunSummary(
        assigned=len(mine),
        done_before=sum(ref.name in captioned_before for ref in mine),
        captioned=work.captioned if work else 0,
        failed=work.failed if work else 0,
        flagged=work.flagged if work else 0,
        seconds=seconds,
        complete=complete,
        merged=merged,
    )
