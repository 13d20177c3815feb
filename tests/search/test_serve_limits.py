"""Issue 27, plm serve: only requests addressed to the server are answered (no DNS rebinding), uploads
from other sites are refused, a thumbnail is decoded once however many requests ask at once, with
reduced decoding and a pixel cap, and every malformed request gets an error page instead of a
dropped connection. Each case failed before issue 27 (a 200 for another Host, 20 decodes, no cap,
a reset connection, a 503 for /similar on an IVF index without a model)."""

from __future__ import annotations

import http.client
import io
import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers.shapes import make_shapes_folder
from plm.search import SearchIndex, VectorIndex, images
from plm.search.hosts import HostPolicy
from plm.search.server import SearchService, make_server

DIM = 8


def _collection(root: Path, kind: str = "exact", extra: tuple[str, ...] = ()) -> SearchIndex:
    make_shapes_folder(root, per_class=2)
    rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*")) + list(extra)
    vecs = np.random.default_rng(0).normal(size=(len(rel), DIM)).astype(np.float32)
    labels = np.full(len(rel), -1)
    return SearchIndex(VectorIndex.build(vecs, kind), rel, labels, str(root), {}, {})


@pytest.fixture
def start():
    """start(service, **make_server options) -> port of a server running in a thread (stopped at the end)."""
    servers = []

    def run(service: SearchService, **options) -> int:
        server = make_server(service, "127.0.0.1", 0, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server.server_address[1]

    yield run
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=20)


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _multipart(data: bytes, field: str = "image") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))}


# ------------------------------------------------------------------------------ Host and Origin


def test_only_requests_addressed_to_the_server_are_answered(tmp_path: Path, start) -> None:
    service = SearchService(_collection(tmp_path / "imgs"), tmp_path / "imgs")
    port = start(service)
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}",
                 f"127.0.0.1:{port + 1}", "localhost", f"192.168.1.5:{port}", f"127.0.0.1:{port}@evil",
                 f"photos.lan:{port}"):
        status, body = _request(port, "GET", "/api/similar?id=0", headers={"Host": host})
        assert status == 400 and "addressed to" in json.loads(body)["error"], host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost:{port}"):
        assert _request(port, "GET", "/api/similar?id=0", headers={"Host": host})[0] == 200, host
    port = start(service, allow_hosts=["photos.lan"])  # plm serve --allow-host photos.lan
    assert _request(port, "GET", "/api/similar?id=0", headers={"Host": f"photos.lan:{port}"})[0] == 200


def test_the_policy_of_a_server_bound_to_every_interface_accepts_addresses_not_names() -> None:
    policy = HostPolicy.for_bind("0.0.0.0", 8765)
    assert policy.allows_host("192.168.1.5:8765") and policy.allows_host("[fe80::1]:8765")
    assert policy.allows_host("localhost:8765") and not policy.allows_host("rebound.example:8765")
    assert not policy.allows_host("192.168.1.5:8766") and not policy.allows_host(None)
    assert policy.allows_origin("http://192.168.1.5:8765") and not policy.allows_origin("https://evil.example")


def test_uploads_from_other_sites_are_refused(tmp_path: Path, start) -> None:
    root = tmp_path / "imgs"
    idx = _collection(root)
    port = start(SearchService(idx, root, embed=lambda img: np.ones(DIM, np.float32)))
    body, headers = _multipart((root / idx.paths[0]).read_bytes())
    for extra in ({"Origin": "http://attacker.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                  {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-site"}):
        status, out = _request(port, "POST", "/search?format=json", body, {**headers, **extra})
        assert status == 403 and "other web sites" in json.loads(out)["error"], extra
    for extra in ({}, {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}):
        assert _request(port, "POST", "/search?format=json", body, {**headers, **extra})[0] == 200, extra


# ------------------------------------------------------------------------------ malformed requests


def _nested_multipart(depth: int) -> tuple[bytes, dict]:
    body = b""
    for i in range(depth):
        body += (f"--b{i}\r\nContent-Disposition: form-data; name=\"image\"\r\n"
                 f"Content-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n").encode()
    body += b"x"
    for i in reversed(range(depth)):
        body += f"\r\n--b{i}--\r\n".encode()
    return body, {"Content-Type": "multipart/form-data; boundary=b0", "Content-Length": str(len(body))}


HUGE = "9" * 5000
#: (method, path, body, headers, expected status); "{nul}" is the id of an indexed path holding a NUL byte
MALFORMED = [
    ("GET", "/similar?id=%C2%B2", b"", {}, 404), ("GET", "/api/similar?id=%D9%A3", b"", {}, 404),
    ("GET", f"/api/similar?id={HUGE}", b"", {}, 404), ("GET", f"/similar?id={HUGE}", b"", {}, 404),
    ("GET", "/?page=%C2%B2", b"", {}, 400), ("GET", f"/?page={HUGE}", b"", {}, 400),
    ("GET", "/thumb/%C2%B2", b"", {}, 404), ("GET", f"/thumb/{HUGE}", b"", {}, 404),
    ("GET", "/image/%C2%B2", b"", {}, 404), ("GET", f"/image/{HUGE}", b"", {}, 404),
    ("POST", "/search", b"", {"Content-Length": "\u00b2"}, 411),
    ("POST", "/search", b"", {"Content-Length": HUGE}, 411),
    ("POST", "/search", *_nested_multipart(2000), 400),
    ("GET", "/thumb/{nul}", b"", {}, 404), ("GET", "/image/{nul}", b"", {}, 404),
    ("GET", "/similar?id={nul}", b"", {}, 200), ("GET", "/api/similar?id={nul}", b"", {}, 200),
]


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory):
    """One server for the malformed requests: a collection with an indexed path holding a NUL byte."""
    root = tmp_path_factory.mktemp("malformed") / "imgs"
    idx = _collection(root, extra=("circles/nul\x00byte.png",))
    server = make_server(SearchService(idx, root, embed=lambda img: np.ones(DIM, np.float32)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "nul": len(idx.paths) - 1}
    server.shutdown()
    server.server_close()
    thread.join(timeout=20)


@pytest.mark.parametrize("method,path,body,headers,expected", MALFORMED,
                         ids=[f"{m} {p[:24]} {str(h)[:30]}" for m, p, _, h, _ in MALFORMED])
def test_a_malformed_request_gets_an_error_page_not_a_dropped_connection(hardened, method: str, path: str,
                                                                         body: bytes, headers: dict,
                                                                         expected: int) -> None:
    status, out = _request(hardened["port"], method, path.replace("{nul}", str(hardened["nul"])), body, headers)
    assert status == expected, (status, out[:300])
    if status >= 400 and not path.startswith("/api/"):
        assert out.count(b'class="error"') == 1, out[-500:]
    assert _request(hardened["port"], "GET", "/")[0] == 200  # still serving


def test_similar_on_an_ivf_index_works_without_a_model_and_with_an_undecodable_image(tmp_path: Path, start) -> None:
    pytest.importorskip("faiss")
    root = tmp_path / "imgs"
    idx = _collection(root, kind="ivf")
    (root / idx.paths[0]).write_bytes(b"no longer an image")
    port = start(SearchService(idx, root, embed=None))  # plm serve --no-upload
    status, out = _request(port, "GET", "/api/similar?id=0")
    assert status == 200 and len(json.loads(out)["results"]) == len(idx.paths) - 1
    assert _request(port, "GET", "/similar?id=0")[0] == 200
    assert _request(port, "GET", "/thumb/0")[0] == 404


# ------------------------------------------------------------------------------ decoding


class _Decodes:
    """Counts (and can hold back) PIL's decoding of chosen files, with the size each was decoded at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, watched: set[str]) -> None:
        self.sizes: list[tuple[int, int]] = []
        self.release = threading.Event()
        self.release.set()
        real = ImageFile.ImageFile.load
        lock = threading.Lock()

        def load(image: ImageFile.ImageFile):
            if getattr(image, "filename", None) in watched and image.tile:  # a decode still to be done
                with lock:
                    self.sizes.append(image.size)
                self.release.wait(timeout=60)
            return real(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_concurrent_thumbnail_requests_decode_the_image_once(tmp_path: Path, start, monkeypatch) -> None:
    root = tmp_path / "imgs"
    idx = _collection(root, extra=("big.png",))
    big = root / "big.png"
    ramp = np.linspace(0, 255, 2400, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (1800, 1))] * 3, axis=2)).save(big)  # 4.3 megapixels, small on disk
    service = SearchService(idx, root)
    port = start(service)
    decodes = _Decodes(monkeypatch, {str(big)})
    decodes.release.clear()
    entered = []
    real_thumbnail = service.thumbnail

    def counted(i: int, side: int = 160) -> bytes:
        entered.append(i)
        return real_thumbnail(i, side)

    monkeypatch.setattr(service, "thumbnail", counted)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(_request(port, "GET", f"/thumb/{len(idx.paths) - 1}")))
               for _ in range(20)]
    for t in threads:
        t.start()
    waited = threading.Event()
    for _ in range(600):  # until every request is inside the server (the first decode is held back)
        if len(entered) == 20:
            break
        waited.wait(0.05)
    waited.wait(0.3)  # let them reach the decoder, as they would under load
    decodes.release.set()
    for t in threads:
        t.join(timeout=60)
    assert len(entered) == 20 and [status for status, _ in results] == [200] * 20
    assert len({body for _, body in results}) == 1
    assert len(decodes.sizes) == 1, f"decoded {len(decodes.sizes)} times for 20 concurrent requests"


def test_thumbnails_decode_jpeg_at_reduced_scale_and_cap_the_pixels(tmp_path: Path, start, monkeypatch) -> None:
    root = tmp_path / "imgs"
    idx = _collection(root, extra=("big.jpg", "big.png"))
    array = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    Image.fromarray(array).save(root / "big.jpg", quality=80)
    Image.fromarray(array).save(root / "big.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200_000)  # 1200 x 900 = 1.08 megapixels
    decodes = _Decodes(monkeypatch, {str(root / "big.jpg"), str(root / "big.png")})
    port = start(SearchService(idx, root))
    status, body = _request(port, "GET", f"/thumb/{idx.paths.index('big.jpg')}")
    assert status == 200 and max(Image.open(io.BytesIO(body)).size) == 160
    assert decodes.sizes == [(300, 225)]  # JPEG decoded at a quarter of each side
    status, page = _request(port, "GET", f"/thumb/{idx.paths.index('big.png')}")
    assert status == 413 and b"1200x900 pixels" in page and page.count(b'class="error"') == 1
    assert decodes.sizes == [(300, 225)]  # the PNG was refused before decoding
    assert _request(port, "GET", f"/image/{idx.paths.index('big.png')}")[0] == 200  # the full file is still served
