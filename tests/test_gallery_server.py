"""`python -m eval serve` on the synthetic CUHK-PEDES-layout test gallery, driven in headless Chromium: a query typed
into the page returns the described identity's image first, a click shows it large, and path traversal is a 404.

What the answer rests on: a tiny random model whose text projection is solved (least squares, exact since the 24
captions are fewer than the text width) so that every test caption's feature equals the feature of the first
image of its identity. The image tower is untouched, so `index` encodes the same features the fit used, and the
top result for a caption is determined: that identity's `_0` image, with a cosine of ~1. The test therefore
proves that the page, the server, the text tower read from the checkpoint file, the index and the image route
agree end to end; it does not measure how well a model retrieves (`make demo` shows that for a trained one)."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data.datasets import load_split
from data.tokenizer import CaptionTokenizer
from data.transforms import eval_transform
from engine.model import CLIPDualEncoder
from engine.runtime.checkpoint import export_model
from eval.__main__ import main as eval_main
from tests.devtools import Browser
from tests.helpers import REPO, tiny_model_config

pytestmark = pytest.mark.slow


@torch.no_grad()
def fit_captions_to_first_images(model: CLIPDualEncoder, split) -> None:
    """Sets text_projection so that each caption's unit-norm feature is its identity's `_0` image feature."""
    transform = eval_transform(model.cfg.image_size)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in split.image_paths])
    image_feats = F.normalize(model.encode_image(images), dim=-1)  # (G, E)
    first_image = {pid: i for i, pid in enumerate(split.image_pids) if split.image_paths[i].stem.endswith("_0")}
    targets = image_feats[[first_image[pid] for pid in split.caption_pids]]  # (Q, E)
    ids = CaptionTokenizer(model.cfg.context_length)(split.captions)  # (Q, N)
    hidden, _ = model._text_hidden(ids, len(model.text_model.encoder.layers))
    pooled = model.text_model.final_layer_norm(hidden[torch.arange(len(ids)), ids.argmax(-1)])  # (Q, Dt)
    model.text_projection.weight.copy_(torch.linalg.lstsq(pooled, targets).solution.T)  # (E, Dt)
    fitted = F.normalize(model.encode_text(ids), dim=-1)
    assert (fitted * targets).sum(-1).min() > 0.999  # the setup holds before anything is tested on it


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server URL, test split, indexed folder) of `python -m eval serve` over an index of the test images."""
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("gallery")
    generate(root / "s", seed=1, train_images=4, test_identities=6, images_per_test_identity=2, progress=False)
    split = load_split("cuhk-pedes", root / "s" / "cuhk_pedes", "test")
    torch.manual_seed(0)
    config = tiny_model_config(context_length=77)  # whole captions: truncated ones can coincide across identities
    model = CLIPDualEncoder(config, tap_layer=1).eval()
    fit_captions_to_first_images(model, split)
    export_model(model, root / "model", config, 1)
    images = root / "s" / "cuhk_pedes" / "imgs" / "test"
    index = root / "test.index"
    assert eval_main(["index", "--checkpoint", str(root / "model"), "--images", str(images), "--out", str(index)]) == 0
    server = subprocess.Popen(
        [sys.executable, "-m", "eval", "serve", "--index", str(index), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()  # "serving N images from DIR at http://127.0.0.1:PORT/"
        assert line.startswith("serving 12 images"), (line, server.stderr.read() if server.poll() is not None else "")
        yield line.split()[-1], split, images
    finally:
        server.terminate()
        server.wait(timeout=30)


async def search_in_browser(url: str, query: str, profile: Path) -> dict:
    async with Browser(profile) as page:
        await page.open(url)
        await page.evaluate("document.getElementById('query').focus()")
        await page.type_text(query)
        await page.press_enter()
        shown = await page.wait_for(
            f"document.getElementById('results').dataset.query === {json.dumps(query)} &&"
            " [...document.querySelectorAll('#results img')].every((i) => i.complete) &&"
            " [...document.querySelectorAll('#results figure')].map((f) => ({path: f.dataset.path,"
            " caption: f.querySelector('figcaption').textContent, width: f.querySelector('img').naturalWidth,"
            " height: f.querySelector('img').getBoundingClientRect().height}))"
        )
        typed = await page.evaluate("document.getElementById('query').value")
        await page.click("#results figure img")
        large = await page.wait_for(
            "document.getElementById('viewer').classList.contains('open') && document.getElementById('large').complete"
            " && {src: document.getElementById('large').src, width: document.getElementById('large').naturalWidth,"
            " height: document.getElementById('large').getBoundingClientRect().height}"
        )
        return {"typed": typed, "shown": shown, "large": large}


def test_typed_query_shows_the_described_identity_first_and_a_click_shows_it_large(served, tmp_path: Path):
    url, split, _ = served
    for caption_index in (0, len(split.captions) - 1):  # two identities: the answer follows the query
        query, pid = split.captions[caption_index], split.caption_pids[caption_index]
        described = split.image_paths[split.caption_image_indices[caption_index]].name  # "p0017_1.jpg"
        expected = described.rsplit("_", 1)[0] + "_0.jpg"  # the identity's first image
        assert split.image_pids[[p.name for p in split.image_paths].index(expected)] == pid
        page = asyncio.run(search_in_browser(url, query, tmp_path / f"chromium{caption_index}"))
        assert page["typed"] == query
        shown = page["shown"]
        assert len(shown) == 10 and all(item["width"] > 0 for item in shown)  # top 10 of 12, every image loaded
        assert shown[0]["path"] == expected, (query, shown[0])
        assert float(shown[0]["caption"].split()[1]) > 0.99  # "1. 0.9998 p0017_0.jpg": its score is shown
        assert page["large"]["src"] == f"{url}image/{expected}" and page["large"]["width"] > 0
        assert page["large"]["height"] > 2 * shown[0]["height"]  # shown large, not as the thumbnail


def test_path_traversal_is_refused(served):
    url, _, images = served
    host, port = url.removeprefix("http://").rstrip("/").split(":")

    def get(path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", path)  # sent as written: http.client does not normalise ".."
        response = connection.getresponse()
        return response.status, response.read()

    status, body = get("/image/p0017_1.jpg")  # the control: an indexed image is served, byte for byte
    assert status == 200 and body == (images / "p0017_1.jpg").read_bytes()
    secret = "../../reid_raw.json"  # exists, two levels above the indexed folder
    assert (images / secret).is_file()
    for attempt in (
        f"/image/{secret}",
        f"/image/{quote(secret, safe='')}",
        "/image/%2e%2e/%2e%2e/reid_raw.json",
        "/image/..%2f..%2freid_raw.json",
        f"/image/{images / secret}",
        "/image//etc/passwd",
        "/../../reid_raw.json",
        "/image/",
    ):
        assert get(attempt)[0] == 404, attempt
    status, body = get("/search?q=" + quote("a man") + "&top=3")
    assert status == 200 and len(json.loads(body)["results"]) == 3
    for empty in ("", quote("   "), quote("\t\n")):  # an empty or whitespace-only description ranks nothing
        status, body = get(f"/search?q={empty}&top=3")
        assert status == 400 and "give q" in json.loads(body)["error"], empty
