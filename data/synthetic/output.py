"""How both datasets write their files: the image folder, JPEG settings, JSON and JSON Lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_DIR = "imgs"
JPEG_QUALITY = 90


def save_jpeg(image: Image.Image, path: Path) -> None:
    # 4:4:4 chroma: at 64 px wide, subsampled chroma would smear the small bag and shoe colours
    image.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
