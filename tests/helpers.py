"""Helpers shared by the test modules: the tiny model and training config, a tiny hand-made caption set,
fake copies of the three dataset annotation formats, a data stream over packed shards, free ports,
`run_on_ranks` for functions on several real gloo processes, and the environment of a client of the test S3 server
(benchmarks/s3_server.py). Fixtures live in conftest.py; no test module imports another."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.gloo_ranks import run_on_ranks as run_on_ranks  # the multi-rank tests take it from here
from benchmarks.reference_step import ReferenceSizes
from benchmarks.s3_server import client_environment
from data.caption_stream import CaptionSampleStream
from data.manifest import Manifest
from data.object_store import RetryPolicy
from engine.config import AugmentConfig, ModelConfig
from engine.runtime.collectives import free_port as free_port  # the multi-rank tests take it from here
from kernels.token_patch_max_cosine_triton import BLOCK_D, BLOCK_M, BLOCK_N_MAX

REPO = Path(__file__).resolve().parents[1]
# The deepspeed launcher of this interpreter, as a module: it also runs where DeepSpeed was installed with --target
# (an offline install onto a PyTorch image), which puts no `deepspeed` script beside the interpreter.
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner"]
SOURCES = ("Ts-qwen", "Ts-shikra", "Td-qwen", "Td-shikra")
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 230, 30)}


def tiny_model_config(**changes) -> ModelConfig:
    """Width 64, 2 layers, 32x32 images (2x2 patches): fast enough for every unit test."""
    values = dict(
        image_size=(32, 32),
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        text_width=64,
        text_layers=2,
        text_heads=2,
        embed_dim=32,
        context_length=16,
    )
    return ModelConfig(**(values | changes))


def write_caption_set(root: Path, *, images: int = 48, dirty_every: int = 10, seed: int = 0) -> Path:
    """Plain-colour images and four caption files; every `dirty_every`-th dynamic qwen caption keeps a slot."""
    rng = random.Random(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    captions: dict[str, dict[str, str]] = {s: {} for s in SOURCES}
    for index in range(images):
        colour = rng.choice(sorted(COLOURS))
        name = f"{index:05d}.jpg"
        Image.new("RGB", (32, 64), COLOURS[colour]).save(root / "imgs" / name)
        captions["Ts-qwen"][name] = f"a person in a {colour} shirt"
        captions["Ts-shikra"][name] = f"the man wears {colour} clothes"
        captions["Td-qwen"][name] = (
            "a [clothing description] person" if index % dirty_every == 0 else f"a {colour} coat"
        )
        captions["Td-shikra"][name] = f"someone dressed in {colour}"
    for source, mapping in captions.items():
        (root / f"{source}.json").write_text(json.dumps(mapping))
    return root


def caption_files(root: Path) -> list[Path]:
    return [root / f"{s}.json" for s in SOURCES]


# The end-to-end tests' tiny training config (SHARDS and CUHK are replaced by paths).
TINY = """
model: {image_size: [64, 32], vision_width: 64, vision_layers: 2, vision_heads: 2, text_width: 64, text_layers: 2,
        text_heads: 2, embed_dim: 32, context_length: 40}
nam: {tap_layer: 1}
data: {shards: SHARDS, num_workers: 0, shuffle_buffer: 64, augment: {crop_padding: 2}}
optim: {lr: 1.0e-3}
train: {epochs: 3, batch_size: 8, log_every_steps: 4}
eval: {cuhk_pedes: CUHK}
"""
BATCHES_PER_EPOCH = 12  # 48 images x 4 captions / 2 ranks / batch 8


def stream(
    shards: Path,
    *,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    epoch: int = 0,
    batch: int = 5,
    sampling: str = "every_caption",
    remote: str | None = None,
    policy: RetryPolicy | None = None,
    shuffle_buffer: int = 64,
    interleave: int = 4,
) -> CaptionSampleStream:
    """A tiny stream over `shards` (with `remote`, `shards` is its local cache, fetched under `policy`)."""
    result = CaptionSampleStream(
        Manifest.load(shards, remote=remote, policy=policy),
        rank=rank,
        world_size=world,
        num_workers=workers,
        batch_size=batch,
        image_size=(32, 16),
        augment=AugmentConfig(),
        context_length=16,
        seed=0,
        shuffle_buffer=shuffle_buffer,
        sampling=sampling,
        remote=remote,
        fetch_policy=policy,
        interleave_shards=interleave,
    )
    result.set_epoch(epoch)
    return result


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1), (128, 64, 32)).save(path)


def write_benchmark(root: Path, annotation_file: str, entries: Any, *, path_field: str | None) -> Path:
    """Write the annotation file and, when path_field is given, a 1-pixel image for every entry."""
    root.mkdir(parents=True, exist_ok=True)
    (root / annotation_file).write_text(json.dumps(entries), encoding="utf-8")
    if path_field is not None:
        for entry in entries:
            write_image(root / "imgs" / entry[path_field])
    return root


def cuhk_entry(split: str, pid: int, file_path: str, captions: list[str]) -> dict[str, Any]:
    return {"split": split, "captions": captions, "file_path": file_path, "processed_tokens": [], "id": pid}


def rstp_entry(split: str, pid: int, img_path: str, captions: list[str]) -> dict[str, Any]:
    return {"id": pid, "img_path": img_path, "captions": captions, "split": split}


# The Triton kernel tests (CPU interpreter and CUDA): shapes, tolerances and inputs.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}

SHAPES = [  # (batch, N, M, D)
    (2, 77, 192, 512),  # the real shapes: CLIP context 77, 192 patches of a 384x128 ViT-B/16 image, 512-d joint space
    (1, 77, 192, 512),  # a batch of one
    (2, BLOCK_N_MAX, BLOCK_M, BLOCK_D),  # exactly one block each way
    (2, BLOCK_N_MAX + 1, BLOCK_M + 1, BLOCK_D + 1),  # one past each block: 1-row, 1-column and 1-feature tails
    (2, BLOCK_N_MAX - 1, BLOCK_M - 1, BLOCK_D - 1),  # one short of each block
    (2, 16, 2 * BLOCK_M, 100),  # the small-N tile (16 rows) exactly full; D not a multiple of BLOCK_D
    (2, 17, 3, 3 * BLOCK_D + 7),  # one past the small-N tile; several D blocks with a tail
    (3, 1, 1, 1),  # one token each way, one feature
]


def correlated_tokens(batch: int, n: int, m: int, d: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text tokens near (or opposite to) some image token, so maxima spread over [-1, 1], not around 0.1."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, m, d, generator=generator) * torch.rand(batch, m, 1, generator=generator).add(0.5)
    source = torch.randint(0, m, (batch, n), generator=generator)
    sign = torch.where(torch.rand(batch, n, 1, generator=generator) < 0.2, -1.0, 1.0)
    noise = torch.rand(batch, n, 1, generator=generator) * 2.0
    text = sign * torch.gather(image, 1, source[..., None].expand(-1, -1, d)) + noise * torch.randn(
        batch, n, d, generator=generator
    )
    return text, image


def random_valid(batch: int, n: int, *, seed: int) -> torch.Tensor:
    return torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)) > 0.25


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, what: str) -> None:
    """assert_close, plus the (b, i) of the largest error and both values there."""

    def message(default: str) -> str:
        error = (actual - expected).abs().nan_to_num(nan=float("inf"))
        b, i = divmod(int(error.argmax()), error.shape[1])
        return f"{what}: largest error at (b={b}, i={i}): triton {actual[b, i].item()!r} vs reference {expected[b, i].item()!r}\n{default}"

    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol, msg=message)


# The reference step at tiny size (benchmarks/reference_step.py).
TINY_REFERENCE = ReferenceSizes(
    image_size=(32, 16),
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    text_width=32,
    text_layers=2,
    text_heads=2,
    embed_dim=16,
    context_length=24,
    tap_layer=1,
)


# ---------------------------------------------------------------- transformers 4.57 and 5.x side by side


def projected(output: Any) -> torch.Tensor:
    """`CLIPModel.get_image_features` / `get_text_features`: a tensor in transformers 4.x, an output whose
    `pooler_output` holds the projected features in 5.x."""
    return getattr(output, "pooler_output", output)


def call_clip_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """transformers' `CLIPEncoderLayer` without masks: (hidden, mask, causal_mask) -> 1-tuple in 4.57, (hidden,
    mask) -> a tensor in 5.x."""
    import inspect

    masks = (None, None) if "causal_attention_mask" in inspect.signature(layer.forward).parameters else (None,)
    out = layer(hidden, *masks)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- running a CLI in this process, and its inputs


def run(main: Callable, argv: list[str]) -> tuple[int, str]:
    """The CLI in this process: (exit status, stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code
    return code, out.getvalue() + err.getvalue()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_refused(result: tuple[int, str], *names: object, status: int = 2) -> str:
    code, text = result
    assert code == status, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    line = last_line(text)
    for name in names:
        assert str(name) in line, f"{name!r} not in the last line: {line!r}"
    return line


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths`."""
    found = {}
    for root in paths:
        files = sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).is_dir() else [Path(root)]
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


# ---------------------------------------------------------------- shared inputs, built once


def fake_run(run_dir: Path, model) -> None:
    """A run folder with the layout training writes (two checkpoints, latest, config, metrics, final/); the
    DeepSpeed state is a small torch.save archive, which is all the checks before training read of it."""
    from safetensors.torch import save_file

    from engine.runtime.checkpoint import export_model

    checkpoints = run_dir / "checkpoints"
    for epoch in (1, 2):
        tag = checkpoints / f"epoch{epoch:04d}"
        export_model(model, tag, model.cfg, tap_layer=1)
        (tag / "train_state.json").write_text(json.dumps({"epoch": epoch, "batches_done": 0, "world_size": 1}))
        save_file({"torch_rng": torch.get_rng_state()}, str(tag / "rank00000_state.safetensors"))
        torch.save({"module": {"w": torch.zeros(4)}, "global_steps": epoch * 8}, tag / "mp_rank_00_model_states.pt")
    (checkpoints / "latest").write_text("epoch0002")
    export_model(model, run_dir / "final", model.cfg, tap_layer=1)
    (run_dir / "config.yaml").write_text("train: {epochs: 2}\n")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0, "step": 1, "loss": 2.0, "lr": 0.1, "samples_per_s": 3.0}\n')


def build_cli_inputs(root: Path) -> dict[str, Path]:
    """Small real inputs for every CLI: caption files and images, shards, a tiny config, an exported model, a run
    folder, and a synthetic data set with a CUHK-PEDES-style benchmark."""
    import yaml

    from data.pack import pack
    from data.synthetic import generate
    from engine.config import config_to_dict
    from engine.model import build_model
    from engine.runtime.checkpoint import export_model

    raw = write_caption_set(root / "raw", images=16)
    pack(raw / "imgs", caption_files(raw), root / "shards", images_per_shard=4)
    config = {
        "model": config_to_dict(tiny_model_config()),
        "nam": {"tap_layer": 1},
        "data": {"shards": str(root / "shards"), "num_workers": 0, "shuffle_buffer": 8},
        "train": {"epochs": 1, "batch_size": 8, "run_dir": str(root / "run"), "log_every_steps": 4},
        "eval": {"every_epochs": 0},
        "log": {"wandb": "disabled"},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), tap_layer=1)
    export_model(model, root / "export", model.cfg, tap_layer=1)
    fake_run(root / "run", model)
    generate(root / "synthetic", seed=1, train_images=4, test_identities=3, images_per_test_identity=2, progress=False)
    return {"root": root, "raw": raw, "shards": root / "shards", "config": root / "tiny.yaml",
            "export": root / "export", "run": root / "run", "cuhk": root / "synthetic" / "cuhk_pedes"}  # fmt: skip


# The S3 tests: moto's standalone server (benchmarks/s3_server.py), the real HTTP path of boto3 and of
# mosaicml-streaming's downloader.
S3_SECRET = "Zq9-distinctive-test-secret-4f1c"  # must appear in no output, log or file of a run


def s3_environment(endpoint: str, home: Path) -> dict[str, str]:
    """The environment of a client of the test server, with S3_SECRET as its secret key."""
    return client_environment(endpoint, home, secret=S3_SECRET)


def files_containing(root: Path, text: str) -> list[str]:
    """Files under `root` whose bytes contain `text`."""
    needle = text.encode()
    return [str(p) for p in sorted(Path(root).rglob("*")) if p.is_file() and needle in p.read_bytes()]


@contextlib.contextmanager
def http_folder_server(root: Path):
    """`root` served read-only over HTTP on 127.0.0.1 (a plain static file server), stopped on exit."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
