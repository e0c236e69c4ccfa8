"""Benchmark folders in object storage, against a real S3-compatible server (moto's, on 127.0.0.1, started by the
s3_server fixture): the eval CLI evaluates an s3:// or http:// root from a local cache exactly as the local folder,
fetching each file once; a cache holds one remote folder; data.pack_dataset uploads its shards like data.pack."""

from __future__ import annotations

import json
from pathlib import Path

from data.manifest import Manifest
from data.object_store import RetryPolicy, s3_client, upload_folder
from data.pack_dataset import main as pack_dataset_main
from data.remote_datasets import MIRROR_FILE
from eval.__main__ import main as eval_main
from tests.helpers import S3_SECRET, assert_refused, files_containing, http_folder_server, run

REMOTE = "s3://shards/cuhk_pedes"
FAST = ["--batch-size", "8"]


def upload_benchmark(root: Path, remote: str = REMOTE) -> list[str]:
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    upload_folder(root, remote, names, policy=RetryPolicy())
    return names


def evaluate(exported: Path, root: str | Path, out: Path, *extra: object) -> tuple[int, str, dict]:
    code, text = run(
        eval_main, ["--checkpoint", exported, "--dataset", "cuhk-pedes", "--root", root, "--out", out, *FAST, *extra]
    )
    return code, text, json.loads(out.read_text()) if code == 0 else {}


def test_eval_of_an_s3_root_gives_the_metrics_of_the_local_folder_fetching_each_file_once(
    exported: Path, cuhk_root: Path, tmp_path: Path, s3_server
):
    uploaded = upload_benchmark(cuhk_root)
    code, text, local = evaluate(exported, cuhk_root, tmp_path / "local.json")
    assert code == 0, text
    cache = tmp_path / "cache"
    code, cold_text, cold = evaluate(exported, REMOTE, tmp_path / "cold.json", "--cache", cache)
    assert code == 0, cold_text
    code, warm_text, warm = evaluate(exported, REMOTE, tmp_path / "warm.json", "--cache", cache)
    assert code == 0, warm_text
    assert cold["metrics"] == local["metrics"] and warm["metrics"] == local["metrics"]
    assert cold["stats"] == local["stats"] and local["stats"]["images"] == 12
    gets = s3_server.gets_under("/shards/cuhk_pedes/")
    entries = json.loads((cuhk_root / "reid_raw.json").read_text())
    test_images = {f"imgs/{e['file_path']}" for e in entries if e["split"] == "test"}
    assert set(gets) == {"reid_raw.json"} | test_images  # the test split's images only, not the others uploaded
    assert set(gets.values()) == {1}  # the warm cache fetched nothing
    assert len(uploaded) > len(gets)
    assert S3_SECRET not in text + cold_text + warm_text and not files_containing(tmp_path, S3_SECRET)


def test_stats_of_an_s3_root_count_every_split_as_the_local_folder(cuhk_root: Path, tmp_path: Path, s3_server):
    upload_benchmark(cuhk_root)
    local = run(eval_main, ["stats", "--dataset", "cuhk-pedes", "--root", cuhk_root])
    remote = run(eval_main, ["stats", "--dataset", "cuhk-pedes", "--root", REMOTE, "--cache", tmp_path / "cache"])
    assert local[0] == remote[0] == 0 and local[1] == remote[1], remote[1]


def test_eval_of_an_http_root(exported: Path, cuhk_root: Path, tmp_path: Path):
    code, text, local = evaluate(exported, cuhk_root, tmp_path / "local.json")
    with http_folder_server(cuhk_root) as url:
        code, text, served = evaluate(exported, f"{url}/", tmp_path / "served.json", "--cache", tmp_path / "cache")
    assert code == 0, text
    assert served["metrics"] == local["metrics"]


def test_an_image_missing_from_the_store_is_named_or_skipped(
    exported: Path, cuhk_root: Path, tmp_path: Path, s3_server
):
    upload_benchmark(cuhk_root)
    entries = json.loads((cuhk_root / "reid_raw.json").read_text())
    gone = next(e["file_path"] for e in entries if e["split"] == "test")
    s3_client().delete_object(Bucket="shards", Key=f"cuhk_pedes/imgs/{gone}")
    cache = tmp_path / "cache"
    args = ["--checkpoint", exported, "--dataset", "cuhk-pedes", "--root", REMOTE, "--cache", cache, *FAST]
    assert_refused(run(eval_main, args), "1 of 12 images", gone)
    code, text = run(eval_main, [*args, "--skip-missing"])
    assert code == 0 and "skipped 1 missing" in text, text


def test_a_url_root_needs_a_cache_and_a_cache_holds_one_remote_folder(
    exported: Path, cuhk_root: Path, tmp_path: Path, s3_server
):
    upload_benchmark(cuhk_root)
    upload_benchmark(cuhk_root, "s3://shards/other")
    args = ["--checkpoint", exported, "--dataset", "cuhk-pedes", *FAST]
    assert_refused(run(eval_main, [*args, "--root", REMOTE]), REMOTE, "--cache")
    cache = tmp_path / "cache"
    assert run(eval_main, [*args, "--root", REMOTE, "--cache", cache])[0] == 0
    assert (cache / MIRROR_FILE).read_text().strip() == REMOTE
    assert_refused(run(eval_main, [*args, "--root", "s3://shards/other", "--cache", cache]), str(cache), REMOTE)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    assert_refused(run(eval_main, [*args, "--root", REMOTE, "--cache", tmp_path / "thesis"]), "not empty")
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == ["chapter1.tex"]


def test_pack_dataset_uploads_its_shards_and_manifest_last(cuhk_root: Path, tmp_path: Path, s3_server):
    argv = ["--dataset", "cuhk-pedes", "--root", cuhk_root, "--out", "s3://shards/cuhk_train", "--stage",
            tmp_path / "stage", "--images-per-shard", "2"]  # fmt: skip
    code, text = run(pack_dataset_main, argv)
    assert code == 0, text
    assert s3_server.puts[-1] == "/shards/cuhk_train/manifest.json"
    local = Manifest.load(tmp_path / "stage")
    fetched = Manifest.load(tmp_path / "cache", remote="s3://shards/cuhk_train")
    assert [s.sha256 for s in fetched.shards] == [s.sha256 for s in local.shards]
    entries = json.loads((cuhk_root / "reid_raw.json").read_text())
    assert fetched.num_identities == local.num_identities == len({e["id"] for e in entries if e["split"] == "train"})
    s3_server.puts.clear()
    assert run(pack_dataset_main, argv)[0] == 0 and s3_server.puts == []  # a rerun sends nothing twice
    assert S3_SECRET not in text


def test_in_training_eval_reads_a_url_root_from_its_cache(cuhk_root: Path, tmp_path: Path, s3_server):
    from engine.config import EvalConfig
    from eval.during_training import TrainingEvaluator

    upload_benchmark(cuhk_root)
    local = TrainingEvaluator(EvalConfig(cuhk_pedes=str(cuhk_root)))
    remote = TrainingEvaluator(EvalConfig(cuhk_pedes=REMOTE), cache=tmp_path / "eval_cache")
    assert [(s.split, s.captions, s.image_pids) for s in remote.splits] == [
        (s.split, s.captions, s.image_pids) for s in local.splits
    ]
    assert all(
        tmp_path / "eval_cache" / "cuhk-pedes" / "imgs" in p.parents for s in remote.splits for p in s.image_paths
    )
