"""generate(): validate the arguments, prepare --out, write both datasets and return a summary of counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from data.outputs import atomic_folder, check_output_subfolders
from data.synthetic.cuhk import write_cuhk_set
from data.synthetic.errors import SyntheticDataError
from data.synthetic.pretraining import write_pretraining_set

DEFAULT_TRAIN_IMAGES = 2000  # LUPerson-MLLM stand-in size; each image is one identity
DEFAULT_TEST_IDENTITIES = 100  # CUHK-PEDES test has 1,000; a tenth keeps evaluation instant
DEFAULT_IMAGES_PER_TEST_IDENTITY = 3  # CUHK-PEDES averages ~3 images per test identity
DEFAULT_NOISE_FRACTION = 0.15  # share of all captions with one wrong attribute word (what NAM should find)
DEFAULT_DIRTY_FRACTION = 0.03  # share of dynamic captions that leak a template slot or <...> markup
DEFAULT_SIZE = (128, 64)  # (H, W) pixels; the model resizes to 384x128
DEFAULT_SPLIT_IDENTITIES = 8  # identities in each of the small CUHK train and val splits

PRETRAIN_DIR = "luperson_mllm"
CUHK_DIR = "cuhk_pedes"


TOOL = "python -m data.synthetic"


def _validate(
    *,
    train_images: int,
    test_identities: int,
    images_per_test_identity: int,
    noise_fraction: float,
    dirty_fraction: float,
    size: tuple[int, int],
    split_identities: int,
) -> None:
    counts = {
        "train_images": train_images,
        "test_identities": test_identities,
        "images_per_test_identity": images_per_test_identity,
        "split_identities": split_identities,
    }
    for name, value in counts.items():
        if value < 1:
            raise SyntheticDataError(f"{name} must be >= 1 (got {value})")
    for name, value in {"noise_fraction": noise_fraction, "dirty_fraction": dirty_fraction}.items():
        if not 0.0 <= value <= 1.0:
            raise SyntheticDataError(f"{name} must be in [0, 1] (got {value})")
    if size[0] < 32 or size[1] < 16:
        raise SyntheticDataError(f"size must be at least 32x16 (HxW) pixels (got {size[0]}x{size[1]})")


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_images: int = DEFAULT_TRAIN_IMAGES,
    test_identities: int = DEFAULT_TEST_IDENTITIES,
    images_per_test_identity: int = DEFAULT_IMAGES_PER_TEST_IDENTITY,
    noise_fraction: float = DEFAULT_NOISE_FRACTION,
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION,
    size: tuple[int, int] = DEFAULT_SIZE,
    split_identities: int = DEFAULT_SPLIT_IDENTITIES,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the pretraining set under out_dir/luperson_mllm and the CUHK-PEDES-style set under out_dir/cuhk_pedes
    (layout in the package docstring) and return a summary of counts. `split_identities` sizes the small CUHK
    train and val splits; their images per identity follow the test split's."""
    _validate(
        train_images=train_images,
        test_identities=test_identities,
        images_per_test_identity=images_per_test_identity,
        noise_fraction=noise_fraction,
        dirty_fraction=dirty_fraction,
        size=size,
        split_identities=split_identities,
    )
    out_dir = Path(out_dir).expanduser()
    check_output_subfolders(out_dir, [PRETRAIN_DIR, CUHK_DIR], flag="--out", overwrite=overwrite, tool=TOOL)
    out_dir.mkdir(exist_ok=True)
    identities_per_split = {"train": split_identities, "val": split_identities, "test": test_identities}
    total_images = train_images + sum(identities_per_split.values()) * images_per_test_identity
    with (
        tqdm(total=total_images, unit="img", desc="synthetic", disable=not progress) as bar,
        atomic_folder(out_dir / PRETRAIN_DIR, tool=TOOL) as pretraining_dir,
        atomic_folder(out_dir / CUHK_DIR, tool=TOOL) as cuhk_dir,
    ):
        pretraining = write_pretraining_set(
            pretraining_dir,
            seed=seed,
            count=train_images,
            size=size,
            noise_fraction=noise_fraction,
            dirty_fraction=dirty_fraction,
            on_image=bar.update,
        )
        cuhk = write_cuhk_set(
            cuhk_dir,
            seed=seed,
            identities_per_split=identities_per_split,
            images_per_identity=images_per_test_identity,
            size=size,
            on_image=bar.update,
        )
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "size": list(size),
        PRETRAIN_DIR: pretraining,
        CUHK_DIR: cuhk,
        "images": total_images,
    }
