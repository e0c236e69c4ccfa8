"""The end-of-epoch verdict on the data: an epoch that trained on nothing, or on data of which more than
`data.max_damaged_share` was damaged, stops the run with the counts instead of ending in a model trained on little
or nothing."""

from __future__ import annotations

from data.manifest import Manifest, ShardError

# Problem kinds that lose one sample (a caption, or an image's captions) each; non_rgb_converted is trained on.
SAMPLE_LOSSES = (
    "malformed_record",
    "empty_image",
    "undecodable_image",
    "truncated_image",
    "empty_caption",
    "caption_not_utf8",
)


class DamagedDataError(ShardError):
    """Too little of an epoch's data could be read; the message gives the counts."""


def damaged_samples(problems: dict[str, int], manifest: Manifest) -> int:
    """Samples lost to damage: the per-sample kinds, plus a missing shard's samples by the manifest's mean shard."""
    per_shard = sum(s.captions for s in manifest.shards) / max(1, len(manifest.shards))
    return sum(problems.get(kind, 0) for kind in SAMPLE_LOSSES) + round(problems.get("missing_shard", 0) * per_shard)


def check_epoch_data(
    epoch: int, problems: dict[str, int], *, trained: int, manifest: Manifest, max_damaged_share: float
) -> None:
    """Raises DamagedDataError when the epoch trained on nothing or lost more than `max_damaged_share`."""
    damaged = damaged_samples(problems, manifest)
    found = ", ".join(f"{kind} {n}" for kind, n in problems.items() if n) or "no damage counted"
    if trained == 0:
        raise DamagedDataError(
            f"epoch {epoch} trained on 0 samples from {manifest.root} ({found}); no model was written. Check the "
            "shards (python -m data.pack writes them) or repack them"
        )
    share = damaged / (damaged + trained)
    if share > max_damaged_share:
        raise DamagedDataError(
            f"epoch {epoch}: {damaged} of {damaged + trained} samples of {manifest.root} were damaged "
            f"({share:.1%} > data.max_damaged_share={max_damaged_share:g}; {found}); no final model was written. "
            "Repack the damaged shards, or raise data.max_damaged_share to accept them"
        )
