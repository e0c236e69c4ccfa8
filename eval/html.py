"""A static, self-contained page of retrieval examples (`python -m eval ... --html DIR`).

DIR/index.html shows a fixed sample of queries: the caption, then its top-10 gallery images, hits framed
green and marked "hit", misses red. The images are copied into DIR/images/ and linked by relative path,
so the folder can be moved or served as is; the page has no script and loads nothing from the network.
"""

from __future__ import annotations

import html
import random
import shutil
from pathlib import Path

import torch

from data.datasets import RetrievalSplit
from eval.report import top_k_rankings

SAMPLE_SEED = 0
SHOWN_PER_QUERY = 10

STYLE = """body { font-family: sans-serif; margin: 1em; }
.query { margin-bottom: 1.5em; }
.ranks { display: flex; gap: 6px; }
figure { margin: 0; text-align: center; font-size: 12px; }
img { height: 128px; border: 4px solid; }
.hit img { border-color: #2a2; } .miss img { border-color: #c22; }"""


def sample_queries(num_queries: int, count: int) -> list[int]:
    """The same `count` query indices for a given split size on every run, in query order."""
    return sorted(random.Random(SAMPLE_SEED).sample(range(num_queries), min(count, num_queries)))


def write_html(out_dir: Path, split: RetrievalSplit, similarity: torch.Tensor, *, num_queries: int = 20) -> Path:
    """Writes out_dir/index.html and out_dir/images/; returns the page's path. similarity: (Q, G)."""
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    queries = sample_queries(similarity.shape[0], num_queries)
    ranked, _ = top_k_rankings(similarity[queries], SHOWN_PER_QUERY)
    blocks = []
    for query, gallery_indices in zip(queries, ranked.tolist(), strict=True):
        figures = []
        for rank, gallery in enumerate(gallery_indices, start=1):
            name = _copy_image(split.image_paths[gallery], gallery, image_dir)
            hit = split.image_pids[gallery] == split.caption_pids[query]
            label = "hit" if hit else "miss"
            figures.append(
                f'<figure class="{label}"><img src="images/{name}" alt="rank {rank}">'
                f"<figcaption>{rank}. {label} (pid {split.image_pids[gallery]})</figcaption></figure>"
            )
        blocks.append(
            f'<div class="query"><p>#{query} (pid {split.caption_pids[query]}): '
            f"{html.escape(split.captions[query])}</p>\n"
            f'<div class="ranks">{"".join(figures)}</div></div>'
        )
    title = html.escape(f"{split.dataset} {split.split}: top {SHOWN_PER_QUERY} of {len(queries)} queries")
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>\n<style>\n{STYLE}\n</style>'
        f"</head>\n<body>\n<h1>{title}</h1>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _copy_image(source: Path, gallery_index: int, image_dir: Path) -> str:
    """Copied once under its gallery index, so equal file names from different folders cannot collide."""
    name = f"{gallery_index:06d}{source.suffix.lower()}"
    if not (image_dir / name).exists():
        shutil.copyfile(source, image_dir / name)
    return name
