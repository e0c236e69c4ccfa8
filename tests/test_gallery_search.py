"""Person search over a user's own images: `python -m eval index` / `search` run in-process on a folder of small
images with tiny random models, the chunked exact search against a full sort, the FAISS path, and the server's
path rules. The browser test of `serve` is in tests/test_gallery_server.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from data.tokenizer import CaptionTokenizer
from engine.model import CLIPDualEncoder
from engine.runtime.checkpoint import export_model
from eval.__main__ import main as eval_main
from eval.search.gallery_index import FORMAT, read_index
from eval.search.gallery_search import GallerySearcher, TextTower, exact_top_k, load_text_tower
from eval.search.gallery_server import GalleryFiles
from tests.helpers import tiny_model_config

COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 230, 30), (20, 20, 20), (240, 240, 240)]


def write_model(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = tiny_model_config()
    export_model(CLIPDualEncoder(config, tap_layer=1), folder, config, 1)
    return folder


def write_images(folder: Path, count: int, *, start: int = 0) -> list[str]:
    """Plain-colour images split over two subfolders, jpg and png; returns their relative paths."""
    written = []
    for index in range(start, start + count):
        relative = f"{'a' if index % 2 else 'b/c'}/img{index:03d}.{'png' if index % 3 == 0 else 'jpg'}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 48), COLOURS[index % len(COLOURS)]).save(folder / relative)
        written.append(relative)
    return written


@pytest.fixture
def gallery(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    model = write_model(tmp_path / "model", seed=0)
    images = tmp_path / "images"
    return model, images, write_images(images, 6)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = eval_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_index_then_search_ranks_every_image(gallery, tmp_path: Path, capsys):
    model, images, relative = gallery
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "gallery.safetensors"
    status, printed, _ = run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    assert status == 0 and "6 encoded" in printed

    index = read_index(out)
    assert index.paths == sorted(relative) and index.images == images.resolve()
    assert index.features.dtype == torch.float16 and index.features.shape == (6, tiny_model_config().embed_dim)
    assert torch.allclose(index.features.float().norm(dim=1), torch.ones(6), atol=1e-3)
    assert index.model.checkpoint == str(model.resolve()) and len(index.model.sha256) == 64
    assert index.model.model_config["model"]["embed_dim"] == tiny_model_config().embed_dim
    with safe_open(str(out), framework="pt") as file:
        assert file.metadata()["format"] == FORMAT

    status, printed, _ = run_cli(capsys, "search", "--index", out, "a person in red", "--top", "4", "--json")
    answer = json.loads(printed)
    assert status == 0 and answer["method"] == "exact" and not answer["truncated"]
    assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3, 4]
    scores = [hit["score"] for hit in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    # the scores are the cosines of the query with the stored features, in full
    searcher = GallerySearcher(out)
    query, _ = searcher.encode_query("a person in red")
    expected = (query @ index.features.float().T)[0].sort(descending=True)
    assert scores == pytest.approx(expected.values[:4].tolist(), abs=1e-5)
    assert [hit["relative_path"] for hit in answer["results"]] == [index.paths[i] for i in expected.indices[:4]]
    assert all(hit["path"] == str(images.resolve() / hit["relative_path"]) for hit in answer["results"])

    status, printed, _ = run_cli(capsys, "search", "--index", out, "a person in red", "--top", "50")
    assert status == 0 and len(printed.splitlines()) == 6  # --top beyond the gallery: every image once


def test_grown_folder_encodes_only_new_images_and_skips_unreadable_ones(gallery, tmp_path: Path, capsys):
    model, images, _ = gallery
    out = tmp_path / "gallery.safetensors"
    assert run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)[0] == 0
    before = read_index(out)

    added = write_images(images, 3, start=6)
    (images / "a" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (images / "b" / "c" / "img000.png").unlink()  # deleted images leave the index
    status, printed, errors = run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    assert status == 0 and "(3 encoded, 5 kept, 1 removed, 1 unreadable)" in printed
    assert f"skipped unreadable image {images.resolve() / 'a' / 'broken.jpg'}" in errors

    after = read_index(out)
    assert list(after.unreadable) == ["a/broken.jpg"] and "a/broken.jpg" not in after.paths
    assert set(after.paths) == (set(before.paths) - {"b/c/img000.png"}) | set(added)
    for path in set(before.paths) - {"b/c/img000.png"}:  # kept rows are the old features, bit for bit
        assert torch.equal(after.features[after.paths.index(path)], before.features[before.paths.index(path)])
    assert not list(tmp_path.glob(".gallery.safetensors.partial*"))

    # a rerun on an unchanged folder writes nothing and does not try the unreadable file again
    mtime = out.stat().st_mtime_ns
    status, printed, errors = run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    assert status == 0 and "up to date" in printed and out.stat().st_mtime_ns == mtime and errors == ""

    # once the unreadable file is replaced by an image, it is encoded
    Image.new("RGB", (24, 48), COLOURS[0]).save(images / "a" / "broken.jpg", format="JPEG")
    status, printed, _ = run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    assert status == 0 and "(1 encoded, 8 kept, 0 removed, 0 unreadable)" in printed
    assert "a/broken.jpg" in read_index(out).paths and read_index(out).unreadable == {}

    # a changed image is encoded again, in its row
    old = read_index(out)
    Image.new("RGB", (40, 80), COLOURS[3]).save(images / "a" / "img001.jpg")
    status, printed, _ = run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    assert status == 0 and "(1 encoded, 8 kept, 0 removed, 0 unreadable)" in printed
    new = read_index(out)
    assert new.paths == old.paths
    changed = [not torch.equal(a, b) for a, b in zip(new.features, old.features, strict=True)]
    assert changed == [p == "a/img001.jpg" for p in new.paths]


def test_an_index_refuses_another_model_and_is_never_overwritten(gallery, tmp_path: Path, capsys):
    model, images, _ = gallery
    other = write_model(tmp_path / "other", seed=1)
    out = tmp_path / "gallery.safetensors"
    assert run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)[0] == 0
    original = out.read_bytes()

    status, printed, errors = run_cli(capsys, "search", "--index", out, "someone", "--checkpoint", other)
    assert status == 2 and printed == "" and len(errors.splitlines()) == 1
    assert str(out) in errors and "another model" in errors

    status, _, errors = run_cli(capsys, "index", "--checkpoint", other, "--images", images, "--out", out)
    assert status == 2 and "another model" in errors and len(errors.splitlines()) == 1
    assert out.read_bytes() == original

    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere, 2)
    status, _, errors = run_cli(capsys, "index", "--checkpoint", model, "--images", elsewhere, "--out", out)
    assert status == 2 and f"indexes {images.resolve()}" in errors and out.read_bytes() == original

    not_an_index = tmp_path / "results.json"
    not_an_index.write_text("{}")
    status, _, errors = run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", not_an_index)
    assert status == 2 and str(not_an_index) in errors and not_an_index.read_text() == "{}"

    # the weights file changed under the same path: refused too
    model_file = model / "model.safetensors"
    state = {k: v.clone() for k, v in safe_open_all(model_file).items()}
    state["text_projection.weight"] += 1
    from safetensors.torch import save_file

    save_file(state, str(model_file))
    status, _, errors = run_cli(capsys, "search", "--index", out, "someone")
    assert status == 2 and "another model" in errors


def safe_open_all(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as file:
        return {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118 (safe_open is not iterable)


def test_bad_inputs_fail_in_one_line_naming_them(gallery, tmp_path: Path, capsys):
    model, images, _ = gallery
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["index", "--checkpoint", model, "--images", tmp_path / "missing", "--out", tmp_path / "x"], "missing"),
        (["index", "--checkpoint", model, "--images", empty, "--out", tmp_path / "x"], str(empty)),
        (["index", "--checkpoint", tmp_path / "nomodel", "--images", images, "--out", tmp_path / "x"], "nomodel"),
        (["search", "--index", tmp_path / "x", "someone"], str(tmp_path / "x")),
    ]
    for argv, named in cases:
        status, _, errors = run_cli(capsys, *argv)
        assert status == 2 and len(errors.splitlines()) == 1 and named in errors, errors
    assert not (tmp_path / "x").exists()


def test_text_tower_alone_matches_the_dual_encoder(gallery):
    model, _, _ = gallery
    full = CLIPDualEncoder(tiny_model_config(), tap_layer=1)
    full.load_state_dict(safe_open_all(model / "model.safetensors"))
    tower = load_text_tower(model, json.loads((model / "model_config.json").read_text()))
    assert isinstance(tower, TextTower) and not any("vision" in name for name, _ in tower.named_parameters())
    ids = CaptionTokenizer(tiny_model_config().context_length)(["a woman in a red coat", "a man"])
    with torch.no_grad():
        assert torch.equal(tower.encode_text(ids), full.eval().encode_text(ids))


def test_long_query_is_truncated_with_a_warning(gallery, tmp_path: Path, capsys):
    model, images, _ = gallery
    out = tmp_path / "gallery.safetensors"
    run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    short = "a woman in a red coat"  # 7 tokens + SOT + EOT fit the tiny model's 16
    long = short + " carrying a black backpack and wearing white shoes with a blue hat"
    assert run_cli(capsys, "search", "--index", out, short)[2] == ""
    status, _, errors = run_cli(capsys, "search", "--index", out, long, "--json")
    assert status == 0 and "longer than the model's 16 tokens" in errors
    first, _ = GallerySearcher(out).encode_query(long)
    cut = CaptionTokenizer(16).decode(CaptionTokenizer(16)([long])[0])
    assert torch.allclose(first, GallerySearcher(out).encode_query(cut)[0], atol=1e-6)


@pytest.mark.parametrize("budget", [1, 40_000, 1 << 30])
def test_chunked_exact_search_equals_a_full_sort(budget: int):
    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(1000, 32, generator=generator), dim=1).half()
    queries = torch.nn.functional.normalize(torch.randn(3, 32, generator=generator), dim=1)
    visited = []

    def rows(start: int, stop: int) -> torch.Tensor:
        visited.append(stop - start)
        return gallery[start:stop]

    scores, indices = exact_top_k(queries, rows, len(gallery), k=10, memory_budget=budget)
    expected = (queries @ gallery.float().T).topk(10, dim=1)
    assert torch.equal(indices, expected.indices) and torch.allclose(scores, expected.values)
    assert sum(visited) == 1000 and (len(visited) > 1) == (budget < 1 << 30)  # small budgets really chunk


def test_approximate_search_through_faiss(gallery, tmp_path: Path, capsys, monkeypatch):
    pytest.importorskip("faiss")
    model, images, _ = gallery
    exact_only, both = tmp_path / "exact.safetensors", tmp_path / "both.safetensors"
    run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", exact_only)
    status, _, errors = run_cli(capsys, "search", "--index", exact_only, "someone", "--approximate")
    assert status == 2 and "no approximate index" in errors and "--approximate" in errors

    assert run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", both, "--approximate")[0] == 0
    assert read_index(both, features=False).approximate["factory"] == "IVF1,SQfp16"  # 6 images: one list
    _, exact, _ = run_cli(capsys, "search", "--index", both, "a person in red", "--json")
    _, approximate, _ = run_cli(capsys, "search", "--index", both, "a person in red", "--json", "--approximate")
    exact, approximate = json.loads(exact)["results"], json.loads(approximate)["results"]
    assert json.loads(run_cli(capsys, "search", "--index", both, "x", "--json", "--approximate")[1])["method"] == (
        "approximate"
    )
    # one inverted list holds every vector: the approximate search is exhaustive, up to fp16 rounding
    assert [h["relative_path"] for h in approximate] == [h["relative_path"] for h in exact]
    assert [h["score"] for h in approximate] == pytest.approx([h["score"] for h in exact], abs=2e-3)

    monkeypatch.setitem(sys.modules, "faiss", None)  # FAISS is installed here; this is how its absence looks
    status, _, errors = run_cli(capsys, "search", "--index", both, "someone", "--approximate")
    assert status == 2 and "--approximate needs FAISS" in errors and len(errors.splitlines()) == 1


def test_server_serves_only_indexed_files_inside_the_folder(tmp_path: Path):
    root = tmp_path / "images"
    write_images(root, 2)
    (tmp_path / "secret.txt").write_text("outside")
    (root / "a" / "link.jpg").symlink_to(tmp_path / "secret.txt")
    files = GalleryFiles(root, ["a/img001.jpg", "b/c/img000.png", "a/link.jpg"])
    assert files.resolve("a/img001.jpg") == (root / "a" / "img001.jpg").resolve()
    assert files.resolve("b/c/img000.png") is not None and files.resolve("b%2Fc%2Fimg000.png") is not None
    for attempt in ("../secret.txt", "%2e%2e/secret.txt", "a/../../secret.txt", str(tmp_path / "secret.txt"), "a"):
        assert files.resolve(attempt) is None, attempt
    assert files.resolve("a/link.jpg") is None  # listed, but its real path is outside the folder


def index_on_rank(rank: int, world: int, argv: list[str]) -> int:
    from eval.search.gallery_index import parse_args, run

    return run(parse_args(argv))  # the command's body; run_on_ranks has set up the gloo group


@pytest.mark.multirank
def test_two_ranks_write_the_same_index_as_one(gallery, tmp_path: Path, capsys):
    from tests.helpers import run_on_ranks

    model, images, _ = gallery
    write_images(images, 3, start=6)
    (images / "a" / "broken.jpg").write_bytes(b"not an image")  # rank 1's share: its flag must travel too
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert (
        run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", one, "--batch-size", "2")[0] == 0
    )
    argv = ["--checkpoint", str(model), "--images", str(images), "--out", str(two), "--batch-size", "2"]
    assert run_on_ranks(2, index_on_rank, argv) == [0, 0]
    single, split = read_index(one), read_index(two)
    assert split.paths == single.paths and len(split.paths) == 9 and split.unreadable == single.unreadable
    assert list(split.unreadable) == ["a/broken.jpg"]
    torch.testing.assert_close(split.features, single.features, rtol=0, atol=1e-3)  # fp16 storage


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_an_empty_description_is_refused_before_any_search(gallery, tmp_path: Path, capsys, query: str):
    model, images, _ = gallery
    out = tmp_path / "gallery.safetensors"
    run_cli(capsys, "index", "--checkpoint", model, "--images", images, "--out", out)
    status, printed, errors = run_cli(capsys, "search", "--index", out, query)
    assert status == 2 and printed == "" and errors.strip().count("\n") == 0
    assert "the description (QUERY) is empty" in errors
    with pytest.raises(Exception, match="is empty"):
        GallerySearcher(out).search(query)
