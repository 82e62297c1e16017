"""An offline, Picsum-compatible photo source: the embedded default and the test fixture.

The live https://picsum.photos is unreachable from the build machines, so the
pipeline talks to this server instead, through exactly the same API shapes:

* ``GET /v2/list?page=P&limit=L``: JSON list of ``{id, author, width, height, url, download_url}``
* ``GET /id/{id}/info`` and ``GET /seed/{seed}/info``: one such object
* ``GET /id/{id}/{w}/{h}`` (or ``/{size}``, optional ``.jpg``): a JPEG resized and centre-cropped to w x h
* ``GET /seed/{seed}/{w}/{h}``: the same photo for the same seed, always
* ``?grayscale`` and ``?blur=1..10`` as on Picsum; image responses carry ``Picsum-ID``

By default it serves the real photographs bundled in the scikit-image wheel
(public domain / CC0, attributed below), so nothing is downloaded.  Any folder
of photos can be served instead; an optional ``photos.json`` in it gives ids,
authors and source pages.  Responses are deterministic: same request, same bytes.

Run: ``python -m superres.picsum_server --host 127.0.0.1 --port 8899 [--photos DIR]``
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import io
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image, ImageFilter, ImageOps

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
MAX_SIDE = 5000  # Picsum's own limit per side
DEFAULT_LIMIT = 30
MAX_LIMIT = 100
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_SKIMAGE_DOCS = "https://scikit-image.org/docs/stable/api/skimage.data.html"

# The natural colour photographs shipped in the scikit-image wheel (no pooch download),
# with attribution from the skimage.data docstrings.  Ids are fixed forever.
SKIMAGE_PHOTOS: tuple[tuple[str, str, str, str], ...] = (
    ("0", "astronaut.png", "NASA (Eileen Collins portrait, public domain)", "https://flic.kr/p/r9qvLn"),
    ("1", "chelsea.png", "Stefan van der Walt (CC0)", f"{_SKIMAGE_DOCS}#skimage.data.chelsea"),
    ("2", "coffee.png", "Rachel Michetti, courtesy of Pikolo Espresso Bar (CC0)",
     f"{_SKIMAGE_DOCS}#skimage.data.coffee"),
    ("3", "hubble_deep_field.jpg", "NASA / Hubble Space Telescope (public domain)",
     "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/"),
    ("4", "ihc.png", "Center for Microscopy And Molecular Imaging (CMMI), no known copyright restrictions",
     f"{_SKIMAGE_DOCS}#skimage.data.immunohistochemistry"),
    ("5", "motorcycle_left.png", "D. Scharstein et al., Middlebury 2014 stereo dataset",
     "http://vision.middlebury.edu/stereo/data/scenes2014/"),
    ("6", "motorcycle_right.png", "D. Scharstein et al., Middlebury 2014 stereo dataset",
     "http://vision.middlebury.edu/stereo/data/scenes2014/"),
    ("7", "retina.jpg", "Mikael Häggström (CC0)",
     "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg"),
    ("8", "rocket.jpg", "SpaceX (public domain)",
     "https://www.flickr.com/photos/spacexphotos/16511594820/"),
)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Photo:
    id: str
    path: Path
    author: str
    url: str  # the photo's source page, for attribution
    width: int
    height: int

    def info(self, base_url: str) -> dict[str, Any]:
        """The Picsum JSON shape (ids are strings, as on picsum.photos)."""
        return {
            "id": self.id,
            "author": self.author,
            "width": self.width,
            "height": self.height,
            "url": self.url,
            "download_url": f"{base_url}/id/{self.id}/{self.width}/{self.height}",
        }


def skimage_data_dir() -> Path:
    """scikit-image's bundled data folder, found without importing (or downloading) anything."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed; pass a photos folder instead")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def _photo(pid: str, path: Path, author: str, url: str) -> Photo:
    if not _ID_RE.match(pid):
        raise ValueError(f"photo id {pid!r} must match {_ID_RE.pattern}")
    width, height = _size(path)
    return Photo(pid, path, author, url, width, height)


def load_catalogue(photos_dir: str | Path | None = None) -> list[Photo]:
    """The photos to serve, sorted by numeric id.

    Without ``photos_dir``: the scikit-image photos above.  With it: every
    photo in the folder; ``photos.json`` (``{"file.jpg": {"id", "author", "url"}}``)
    may set ids and attribution, otherwise ids are 0.. in file-name order.
    """
    if photos_dir is None:
        data = skimage_data_dir()
        photos = [_photo(pid, data / name, author, url)
                  for pid, name, author, url in SKIMAGE_PHOTOS if (data / name).is_file()]
        if not photos:
            raise FileNotFoundError(f"no bundled photos found under {data}")
    else:
        folder = Path(photos_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"photos folder {folder} does not exist")
        meta_path = folder / "photos.json"
        meta: dict[str, dict[str, Any]] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        photos = []
        for index, path in enumerate(files):
            m = meta.get(path.name, {})
            photos.append(_photo(str(m.get("id", index)), path, str(m.get("author", "unknown")),
                                 str(m.get("url", path.name))))
        if not photos:
            raise FileNotFoundError(f"no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) in {folder}")
    ids = [p.id for p in photos]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate photo ids in catalogue: {ids}")
    return sorted(photos, key=lambda p: (not p.id.isdigit(), int(p.id) if p.id.isdigit() else 0, p.id))


_SOURCE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def _load_source(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _source(path: Path) -> Image.Image:
    """Decoded source photo, cached: decoding a large PNG per request would dominate."""
    with _SOURCE_LOCK:  # one decode per photo even when requests arrive together
        return _load_source(path)


@functools.lru_cache(maxsize=32)
def render(path: Path, width: int, height: int, grayscale: bool = False, blur: int = 0) -> bytes:
    """The photo resized and centre-cropped to width x height as deterministic JPEG bytes."""
    img = ImageOps.fit(_source(path), (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    if grayscale:
        img = img.convert("L")
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


def seed_index(seed: str, n: int) -> int:
    """Stable photo index for a seed (sha256, not hash(): that is salted per process)."""
    return int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big") % n


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Response = tuple[int, dict[str, str], bytes]


class PicsumHandler(BaseHTTPRequestHandler):
    """Routes the Picsum API; subclass and override :meth:`respond` to inject faults in tests."""

    server: PicsumHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "superres-picsum/1"
    timeout = 30  # idle keep-alive connections must not pin a thread forever

    _ROUTES = (
        ("list", re.compile(r"^/v2/list/?$")),
        ("id_info", re.compile(r"^/id/(?P<pid>[^/]+)/info/?$")),
        ("seed_info", re.compile(r"^/seed/(?P<seed>[^/]+)/info/?$")),
        ("id_image", re.compile(r"^/id/(?P<pid>[^/]+)/(?P<w>\d+)(?:/(?P<h>\d+))?(?:\.jpe?g)?/?$")),
        ("seed_image", re.compile(r"^/seed/(?P<seed>[^/]+)/(?P<w>\d+)(?:/(?P<h>\d+))?(?:\.jpe?g)?/?$")),
        ("health", re.compile(r"^/healthz/?$")),
    )

    # -- plumbing ---------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def base_url(self) -> str:
        """Where this client reached us (so download_url works through any bound address)."""
        host = self.headers.get("Host", "")
        return f"http://{host}" if _HOST_RE.match(host) else self.server.url

    def do_GET(self) -> None:
        self._reply(head=False)

    def do_HEAD(self) -> None:
        self._reply(head=True)

    def _reply(self, head: bool) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        try:
            status, headers, body = self.respond(unquote(split.path), query)
        except HTTPError as exc:
            status, headers, body = _text(exc.status, str(exc))
        except Exception:  # a bug must answer 500, not kill the connection silently
            log.exception("picsum server error on %s", self.path)
            status, headers, body = _text(500, "Internal server error")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # -- the API ----------------------------------------------------------------

    def respond(self, path: str, query: dict[str, list[str]]) -> Response:
        """(status, headers, body) for a request path; raise HTTPError for client errors."""
        for name, pattern in self._ROUTES:
            m = pattern.match(path)
            if m:
                return getattr(self, f"_{name}")(query, **m.groupdict())
        raise HTTPError(404, "Not found")

    def _health(self, query: dict[str, list[str]]) -> Response:
        return _text(200, "ok")

    def _list(self, query: dict[str, list[str]]) -> Response:
        page = _int_param(query, "page", 1, 1, 1_000_000)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        photos = self.server.photos
        start = (page - 1) * limit
        base = self.base_url()
        items = [p.info(base) for p in photos[start:start + limit]]
        links = []
        if page > 1:
            links.append(f'<{base}/v2/list?page={page - 1}&limit={limit}>; rel="prev"')
        if start + limit < len(photos):
            links.append(f'<{base}/v2/list?page={page + 1}&limit={limit}>; rel="next"')
        status, headers, body = _json(200, items)
        if links:
            headers["Link"] = ", ".join(links)
        return status, headers, body

    def _by_id(self, pid: str) -> Photo:
        photo = self.server.by_id.get(pid)
        if photo is None:
            raise HTTPError(404, "Image does not exist")
        return photo

    def _by_seed(self, seed: str) -> Photo:
        if not 1 <= len(seed) <= 200:
            raise HTTPError(400, "Invalid seed")
        return self.server.photos[seed_index(seed, len(self.server.photos))]

    def _id_info(self, query: dict[str, list[str]], pid: str) -> Response:
        return _json(200, self._by_id(pid).info(self.base_url()))

    def _seed_info(self, query: dict[str, list[str]], seed: str) -> Response:
        return _json(200, self._by_seed(seed).info(self.base_url()))

    def _id_image(self, query: dict[str, list[str]], pid: str, w: str, h: str | None) -> Response:
        return self._image(self._by_id(pid), query, w, h)

    def _seed_image(self, query: dict[str, list[str]], seed: str, w: str, h: str | None) -> Response:
        return self._image(self._by_seed(seed), query, w, h)

    def _image(self, photo: Photo, query: dict[str, list[str]], w: str, h: str | None) -> Response:
        width, height = int(w), int(h if h is not None else w)
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise HTTPError(400, f"Invalid size: each side must be 1..{MAX_SIDE}")
        grayscale = "grayscale" in query
        blur = 0
        if "blur" in query:
            raw = query["blur"][0]
            blur = 1 if raw == "" else _int_param(query, "blur", 1, 1, 10)
        body = render(photo.path, width, height, grayscale, blur)
        headers = {
            "Content-Type": "image/jpeg",
            "Picsum-ID": photo.id,
            "Cache-Control": "public, max-age=2592000, immutable",
            "Content-Disposition": f'inline; filename="{photo.id}-{width}x{height}.jpg"',
        }
        return 200, headers, body


def _int_param(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    if name not in query:
        return default
    raw = query[name][0]
    if not re.fullmatch(r"\d{1,9}", raw) or not lo <= int(raw) <= hi:
        raise HTTPError(400, f"Invalid {name}: expected an integer in {lo}..{hi}")
    return int(raw)


def _text(status: int, message: str) -> Response:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, (message + "\n").encode("utf-8")


def _json(status: int, obj: Any) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode("utf-8")


class PicsumHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 photos: Sequence[Photo]) -> None:
        super().__init__(address, handler)
        self.photos = list(photos)
        self.by_id = {p.id: p for p in self.photos}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningServer:
    """A server on a background thread; ``with serve() as s: requests.get(s.url + ...)``."""

    def __init__(self, httpd: PicsumHTTPServer) -> None:
        self.httpd = httpd
        self.url = httpd.url
        self.photos = httpd.photos
        self._thread = threading.Thread(target=httpd.serve_forever, name="picsum-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(host: str = "127.0.0.1", port: int = 0, photos_dir: str | Path | None = None,
          handler: type[PicsumHandler] = PicsumHandler) -> RunningServer:
    """Start the server on a background thread (port 0 picks a free port); see ``.url``."""
    httpd = PicsumHTTPServer((host, port), handler, load_catalogue(photos_dir))
    return RunningServer(httpd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m superres.picsum_server",
                                     description="An offline, Picsum-compatible photo server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8899, help="port (0 picks a free one; default 8899)")
    parser.add_argument("--photos", default=None,
                        help="folder of photos (default: scikit-image's bundled photos)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        httpd = PicsumHTTPServer((args.host, args.port), PicsumHandler, load_catalogue(args.photos))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (docker stop, supervisors) shuts down as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start())
    print(f"picsum server serving {len(httpd.photos)} photos on {httpd.url}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
