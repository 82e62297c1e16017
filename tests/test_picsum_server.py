"""The offline Picsum server answers the live API's shapes, deterministically, with real photos."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from superres import images
from superres.picsum_server import SKIMAGE_PHOTOS, load_catalogue, seed_index, serve, skimage_data_dir

LIST_KEYS = {"id", "author", "width", "height", "url", "download_url"}


def test_list_has_picsum_shape_and_paginates(picsum_url: str) -> None:
    everything = requests.get(f"{picsum_url}/v2/list?limit=100", timeout=10).json()
    assert len(everything) == len(SKIMAGE_PHOTOS)
    for item in everything:
        assert set(item) == LIST_KEYS
        assert isinstance(item["id"], str) and isinstance(item["width"], int)  # ids are strings, as live
        assert item["download_url"] == f"{picsum_url}/id/{item['id']}/{item['width']}/{item['height']}"
        assert item["author"] and item["url"].startswith("http")
    pages = [requests.get(f"{picsum_url}/v2/list?page={p}&limit=4", timeout=10) for p in (1, 2, 3, 4)]
    assert [len(r.json()) for r in pages] == [4, 4, 1, 0]
    assert [i for r in pages for i in r.json()] == everything
    assert 'rel="next"' in pages[0].headers["Link"] and 'rel="prev"' in pages[1].headers["Link"]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "page=0", "page=x"])
def test_list_rejects_bad_paging(picsum_url: str, query: str) -> None:
    assert requests.get(f"{picsum_url}/v2/list?{query}", timeout=10).status_code == 400


def test_info_matches_list_and_unknown_ids_404(picsum_url: str) -> None:
    listed = {i["id"]: i for i in requests.get(f"{picsum_url}/v2/list", timeout=10).json()}
    for pid, item in listed.items():
        assert requests.get(f"{picsum_url}/id/{pid}/info", timeout=10).json() == item
    for path in ("/id/999/info", "/id/999/64/64", "/id/abc/64/64", "/nothing/here"):
        reply = requests.get(picsum_url + path, timeout=10)
        assert reply.status_code == 404, path
        assert reply.text.strip()


def test_image_is_a_jpeg_of_the_requested_size(picsum_url: str) -> None:
    reply = requests.get(f"{picsum_url}/id/1/120/80", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "image/jpeg"
    assert reply.headers["Picsum-ID"] == "1"
    assert int(reply.headers["Content-Length"]) == len(reply.content)
    dec = images.decode(reply.content)
    assert (dec.format, dec.width, dec.height, dec.pixels.ndim) == ("JPEG", 120, 80, 3)
    square = images.decode(requests.get(f"{picsum_url}/id/1/50.jpg", timeout=10).content)
    assert (square.width, square.height) == (50, 50)


def test_image_bytes_are_deterministic(picsum_url: str) -> None:
    a = requests.get(f"{picsum_url}/id/7/96/64", timeout=10).content
    b = requests.get(f"{picsum_url}/id/7/96/64", timeout=10).content
    other = requests.get(f"{picsum_url}/id/8/96/64", timeout=10).content
    assert a == b
    assert a != other


def test_grayscale_and_blur_options(picsum_url: str) -> None:
    grey = Image.open(io.BytesIO(requests.get(f"{picsum_url}/id/2/64/64?grayscale", timeout=10).content))
    assert grey.mode == "L"

    def pixels(query: str) -> np.ndarray:
        body = requests.get(f"{picsum_url}/id/2/64/64{query}", timeout=10).content
        return images.decode(body).pixels.astype(int)

    sharp, soft = pixels(""), pixels("?blur=5")
    assert np.abs(np.diff(soft, axis=1)).mean() < np.abs(np.diff(sharp, axis=1)).mean()
    assert requests.get(f"{picsum_url}/id/2/64/64?blur=11", timeout=10).status_code == 400


@pytest.mark.parametrize("path", ["/id/1/0/10", "/id/1/10/5001", "/seed/x/0"])
def test_bad_sizes_are_400(picsum_url: str, path: str) -> None:
    assert requests.get(picsum_url + path, timeout=10).status_code == 400


def test_seed_gives_the_same_photo_every_time(picsum_url: str) -> None:
    first = requests.get(f"{picsum_url}/seed/superres/64/48", timeout=10)
    again = requests.get(f"{picsum_url}/seed/superres/64/48", timeout=10)
    assert first.headers["Picsum-ID"] == again.headers["Picsum-ID"]
    assert first.content == again.content
    info = requests.get(f"{picsum_url}/seed/superres/info", timeout=10).json()
    assert info["id"] == first.headers["Picsum-ID"]
    ids = {requests.get(f"{picsum_url}/seed/s{i}/16", timeout=10).headers["Picsum-ID"] for i in range(24)}
    assert len(ids) > 1  # seeds spread over the catalogue
    assert seed_index("superres", 9) == seed_index("superres", 9)


def test_head_sends_headers_only(picsum_url: str) -> None:
    reply = requests.head(f"{picsum_url}/id/0/32/32", timeout=10)
    assert reply.status_code == 200 and reply.content == b""
    assert int(reply.headers["Content-Length"]) > 0 and reply.headers["Picsum-ID"] == "0"


def test_bundled_photos_are_real_colour_photographs() -> None:
    data = skimage_data_dir()
    catalogue = load_catalogue()
    assert [p.id for p in catalogue] == [str(i) for i in range(len(SKIMAGE_PHOTOS))]
    for photo in catalogue:
        assert photo.path.parent == data and photo.path.is_file()
        dec = images.read(photo.path)
        assert dec.rgb().shape[2] == 3 and min(dec.width, dec.height) >= 256
        rgb = dec.rgb().astype(int)
        assert np.abs(rgb[..., 0] - rgb[..., 1]).mean() > 1  # colour, not grey
        assert photo.author and photo.url.startswith("http")


def test_custom_photo_folder_with_attribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "photos.json").write_text(json.dumps({"c.jpg": {"id": "42", "author": "Ada", "url": "https://x"}}))
    with serve(photos_dir=tmp_path) as server:
        listed = requests.get(f"{server.url}/v2/list", timeout=10).json()
        assert [(i["id"], i["author"]) for i in listed] == [("0", "unknown"), ("1", "unknown"), ("42", "Ada")]
        assert requests.get(f"{server.url}/id/42/30/20", timeout=10).headers["Picsum-ID"] == "42"
    with pytest.raises(FileNotFoundError):
        load_catalogue(tmp_path / "missing")


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    (tmp_path / "photos.json").write_text(json.dumps({"a.png": {"id": "1"}}))
    with pytest.raises(ValueError, match="duplicate"):
        load_catalogue(tmp_path)


def test_cli_prints_its_url_and_serves(tmp_path: Path) -> None:
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    cmd = [sys.executable, "-m", "superres.picsum_server", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in line, line
        url = line.strip().split()[-1]
        assert requests.get(f"{url}/healthz", timeout=10).text.strip() == "ok"
        assert len(requests.get(f"{url}/v2/list", timeout=10).json()) == len(SKIMAGE_PHOTOS)
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0  # SIGTERM is a clean shutdown
