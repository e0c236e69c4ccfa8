"""Encode a benchmark split with the dual encoder: L2-normalised image and caption features.

Launched with several ranks, each rank encodes a contiguous share of the images and captions and the
features are gathered at the end, in order, on every rank."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.datasets import RetrievalSplit
from data.tokenizer import CaptionTokenizer
from data.transforms import eval_transform
from engine.model import CLIPDualEncoder
from engine.runtime import collectives


def _quiet() -> bool:
    """Progress bars only on an interactive terminal, and only on rank 0: logs stay readable."""
    return not sys.stderr.isatty() or collectives.rank() != 0


# What a decoder raises for a file that is not a readable image (PIL: OSError, SyntaxError, ValueError, bombs).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFiles(Dataset):
    """(image (3, H, W), 1) per path, resized as evaluation does. With `blank_undecodable`, a file that does not
    decode gives (zeros, 0) instead of an error: one bad file must not stop a gallery index. Benchmark splits are
    checked before encoding (eval/image_check.py), so there a bad file raises."""

    def __init__(
        self,
        paths: list,
        image_size: tuple[int, int],
        interpolation: str = "bilinear",
        *,
        blank_undecodable: bool = False,
    ) -> None:
        self.paths = paths
        self.transform = eval_transform(image_size, interpolation)
        self.blank = torch.zeros(3, *image_size)
        self.blank_undecodable = blank_undecodable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert("RGB")), 1
        except DECODE_ERRORS:
            if not self.blank_undecodable:
                raise
            return self.blank, 0


@torch.no_grad()
def encode_split(
    model: CLIPDualEncoder,
    split: RetrievalSplit,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | None = None,
    interpolation: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (image features (G, E), caption features (Q, E)), both unit-norm float32; the model is left in
    the train/eval mode it came in. Images are resized with `interpolation` (data.augment.interpolation when a
    config is known; bilinear, the reference's test transform, otherwise)."""
    device = device or torch.device("cpu")
    was_training = model.training
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    image_start, image_stop = collectives.block_bounds(len(split.image_paths))
    caption_start, caption_stop = collectives.block_bounds(len(split.captions))
    images = DataLoader(
        ImageFiles(split.image_paths[image_start:image_stop], model.cfg.image_size, interpolation),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    image_feats = [
        model.encode_image(batch.to(device, dtype)).float()
        for batch, _ in tqdm(images, desc="images", mininterval=5.0, leave=False, disable=_quiet())
    ]
    tokenizer = CaptionTokenizer(model.cfg.context_length)
    captions = split.captions[caption_start:caption_stop]
    text_feats = []
    for start in tqdm(
        range(0, len(captions), batch_size), desc="captions", mininterval=5.0, leave=False, disable=_quiet()
    ):
        text_feats.append(model.encode_text(tokenizer(captions[start : start + batch_size]).to(device)).float())
    model.train(was_training)
    width = model.cfg.embed_dim
    image_feats = F.normalize(torch.cat(image_feats) if image_feats else torch.empty(0, width, device=device), dim=-1)
    text_feats = F.normalize(torch.cat(text_feats) if text_feats else torch.empty(0, width, device=device), dim=-1)
    return (
        collectives.gather_blocks(image_feats, len(split.image_paths)),
        collectives.gather_blocks(text_feats, len(split.captions)),
    )
