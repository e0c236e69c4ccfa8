"""Encode a benchmark split with the dual encoder: L2-normalised image and caption features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.transforms import eval_transform
from engine.model import CLIPDualEncoder
from engine.tokenizer import CLIPTokenizer
from eval.benchmarks import RetrievalSplit


class _ImageFiles(Dataset):
    def __init__(self, paths: list, image_size: tuple[int, int]) -> None:
        self.paths = paths
        self.transform = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


@torch.no_grad()
def encode_split(
    model: CLIPDualEncoder,
    split: RetrievalSplit,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (image features (G, E), caption features (Q, E)), both unit-norm float32."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    images = DataLoader(
        _ImageFiles(split.image_paths, model.cfg.image_size), batch_size=batch_size, num_workers=num_workers
    )
    image_feats = [
        model.encode_image(batch.to(device, dtype)).float()
        for batch in tqdm(images, desc="images", mininterval=5.0, leave=False)
    ]
    tokenizer = CLIPTokenizer(model.cfg.context_length)
    text_feats = []
    for start in tqdm(range(0, len(split.captions), batch_size), desc="captions", mininterval=5.0, leave=False):
        ids = tokenizer(split.captions[start : start + batch_size]).to(device)
        text_feats.append(model.encode_text(ids).float())
    return F.normalize(torch.cat(image_feats), dim=-1), F.normalize(torch.cat(text_feats), dim=-1)
