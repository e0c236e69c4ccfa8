"""The order of images in the shards and of samples in a worker's stream: what makes a batch a random sample.

Packing writes images in a seeded random permutation of their sorted file names, so a shard is a random sample of
the data set and neighbouring file names (often frames of one video, in LUPerson) land in unrelated shards. When
reading, each caption of an image goes to its own pass over the worker's shards (`caption_pass`), so two captions
of one image meet in a batch no more often than under a uniform shuffle (docs/method.md, "Sampling")."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

ORDER_KIND = "seeded_random_permutation"


def derived_seed(*parts: int) -> int:
    """A 31-bit seed from integers (run seed, epoch, step, rank, ...): the same parts give the same seed in every
    process, since Python salts the hashes of strings but not of integers and tuples of them."""
    return hash(parts) & 0x7FFF_FFFF


def image_permutation(count: int, seed: int) -> list[int]:
    """Positions of the sorted inputs in packing order: packed[k] = sorted_inputs[permutation[k]]."""
    permutation = list(range(count))
    random.Random(seed).shuffle(permutation)
    return permutation


def order_record(names: list[str], seed: int) -> dict:
    """What the manifest says about the order: how it was drawn, and the checksum of the input list it permuted
    (sorted file names for data.pack, the annotation file's order for data.pack_dataset)."""
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {"kind": ORDER_KIND, "seed": seed, "input_names_sha256": digest}


def packed_positions(names: list[str], image_order: dict | None) -> dict[str, int]:
    """File name -> image index in a packing of these images: their sorted names in the seeded order that the
    manifest's `image_order` records (a packing without that record kept sorted order). Caption ids follow from it:
    image index * number of caption sources + source index."""
    names = sorted(names)
    if image_order and image_order.get("kind") == ORDER_KIND:
        names = [names[i] for i in image_permutation(len(names), int(image_order["seed"]))]
    return {name: index for index, name in enumerate(names)}


def caption_passes(num_captions: int, passes: int, rng: random.Random) -> list[int]:
    """For one image with `num_captions` captions: the pass (of `passes`) each caption is read in, all different
    while there are no more captions than passes."""
    slots = list(range(passes))
    rng.shuffle(slots)
    return [slots[j % passes] for j in range(num_captions)]


def interleave(shards: list[Iterator[T]], *, width: int, rng: random.Random) -> Iterator[T]:
    """Items of several iterators at once: up to `width` are open, each next item comes from a random open one, and
    an exhausted one is replaced by the next in the list. Deterministic given `rng`'s state."""
    pending, open_ = list(shards), []
    while pending or open_:
        while pending and len(open_) < width:
            open_.append(pending.pop(0))
        chosen = rng.randrange(len(open_))
        try:
            yield next(open_[chosen])
        except StopIteration:
            open_.pop(chosen)
