"""The `--html` page rendered in headless Chromium: every image loads from the copied images/ folder, hits and
misses are marked by pid, captions are escaped. Chromium comes from .ci/install-chromium.sh."""

import re
import subprocess
from pathlib import Path

import pytest
import torch

from data.datasets import load_split
from eval.html import SHOWN_PER_QUERY, sample_queries, write_html
from tests.devtools import CHROMIUM_FLAGS, chromium

# The page is only a file: no sandbox (we run as root in CI), no GPU, nothing that reaches the network.
# After the load event (every image settled), write "loaded/total" images into the DOM for --dump-dom.
PROBE = (
    '<script>window.addEventListener("load", () => { const images = [...document.images];'
    " const loaded = images.filter((i) => i.complete && i.naturalWidth > 0).length;"
    ' const probe = document.createElement("div"); probe.id = "probe";'
    ' probe.textContent = loaded + "/" + images.length; document.body.appendChild(probe); });</script>'
)


def loaded_images(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images loaded with naturalWidth > 0, <img> elements) of the page as Chromium renders it."""
    probe_page = page.with_name("probe.html")  # beside the page, so its relative image paths still resolve
    probe_page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom"]
    dom = subprocess.run([*command, probe_page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<div id="probe">(\d+)/(\d+)</div>', dom)
    assert found, f"no probe in Chromium's DOM dump: {dom[:300]!r}"
    return int(found[1]), int(found[2])


@pytest.fixture
def test_split(tmp_path: Path):
    from data.synthetic import generate

    generate(tmp_path / "s", seed=1, train_images=4, test_identities=6, images_per_test_identity=2, progress=False)
    return load_split("cuhk-pedes", tmp_path / "s" / "cuhk_pedes", "test")


@pytest.mark.slow
def test_page_renders_every_image_with_hits_marked(test_split, tmp_path: Path):
    # Same-pid images score 1 and the rest 0: every query's first 2 images are hits, the other 8 misses.
    caption_pids, image_pids = torch.tensor(test_split.caption_pids), torch.tensor(test_split.image_pids)
    similarity = (caption_pids[:, None] == image_pids[None, :]).float()  # (24, 12)
    queries = sample_queries(len(test_split.captions), 5)
    assert len(queries) == 5 and queries == sample_queries(len(test_split.captions), 5)  # deterministic
    test_split.captions[queries[0]] = 'a <b>bold</b> & "quoted" caption'
    page = write_html(tmp_path / "page", test_split, similarity, num_queries=5)

    text = page.read_text()
    assert text.count('<figure class="hit">') == 5 * 2 and text.count('<figure class="miss">') == 5 * 8
    assert "<b>bold" not in text and "a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; caption" in text
    assert all(src.startswith("images/") for src in re.findall(r'<img src="([^"]+)"', text))
    assert loaded_images(page, tmp_path) == (5 * SHOWN_PER_QUERY, 5 * SHOWN_PER_QUERY)

    # the probe is not vacuous: a broken copy shows up as an image that did not load
    broken = sorted((tmp_path / "page" / "images").iterdir())[0]
    broken.write_bytes(b"not an image")
    uses = text.count(f'src="images/{broken.name}"')
    assert loaded_images(page, tmp_path) == (5 * SHOWN_PER_QUERY - uses, 5 * SHOWN_PER_QUERY)
