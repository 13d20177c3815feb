"""plm serve end to end: a real server process on 127.0.0.1, browsed in headless Chromium and probed
over plain HTTP (only indexed files are served, uploads are limited and checked, names escaped)."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.browser import CHROMIUM, HOSTILE_LABEL, HOSTILE_NAME, console
from helpers.shapes import make_shapes_folder
from plm.cli import main

pytest.importorskip("faiss")
SRC = Path(__file__).resolve().parents[2] / "src"
MAX_UPLOAD_KB = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A ``plm serve`` process on a free port of 127.0.0.1, stopped (and waited for) at the end."""
    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "imgs"
    make_shapes_folder(root, per_class=4)
    (root / "squares").rename(root / HOSTILE_LABEL)
    shutil.copy(root / HOSTILE_LABEL / "square_001.jpg", root / HOSTILE_LABEL / HOSTILE_NAME)
    secret = tmp / "secret.png"  # outside the collection: must never be served
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    (root / "circles" / "link.png").symlink_to(root / "circles" / "circle_000.png")  # indexed, later re-pointed
    emb, idx = tmp / "e.npz", tmp / "i.npz"
    assert main(["embed", str(root), "--backbone", "efficientnet_lite0", "--image-size", "32", "--out", str(emb),
                 "--quiet"]) == 0
    assert main(["index", str(emb), "--out", str(idx), "--kind", "hnsw"]) == 0
    (root / "circles" / "link.png").unlink()
    (root / "circles" / "link.png").symlink_to(secret)  # now leads out of the collection
    shutil.copy(root / "circles" / "circle_001.jpg", root / "circles" / "added_later.jpg")  # not in the index
    log = open(tmp / "server.log", "w")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "plm", "-v", "serve", str(idx), "--port", "0", "-k", "5",
                             "--max-upload-mb", str(MAX_UPLOAD_KB / 1024), "--max-requests", "400"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + (tmp / "server.log").read_text()
        yield {"port": int(found.group(1)), "root": root, "tmp": tmp, "idx": idx, "secret": secret,
               "log": tmp / "server.log", "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def _request(server: dict, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _multipart(data: bytes, filename: str = "q.jpg", field: str = "image") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))}


def _paths(server: dict) -> list[str]:
    from plm.search import SearchIndex

    return SearchIndex.load(server["idx"]).paths


def test_home_page_lists_the_collection_with_escaped_names(server: dict) -> None:
    status, headers, body = _request(server, "GET", "/")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert text.count('src="/thumb/') == len(_paths(server)) == 14
    assert "&lt;script&gt;alert(1)&lt;.png" in text and HOSTILE_NAME not in text and HOSTILE_LABEL not in text
    assert "<script" not in text and 'enctype="multipart/form-data"' in text


def test_similar_matches_the_index_and_serves_only_indexed_files(server: dict) -> None:
    from plm.search import SearchIndex

    idx = SearchIndex.load(server["idx"])
    hostile = idx.paths.index(f"{HOSTILE_LABEL}/{HOSTILE_NAME}")
    status, _, body = _request(server, "GET", f"/api/similar?id={hostile}")
    data = json.loads(body)
    assert status == 200 and len(data["results"]) == 5
    assert data["results"][0]["path"] == f"{HOSTILE_LABEL}/square_001.jpg"  # its byte-identical copy
    assert data["results"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert all(r["id"] != hostile for r in data["results"])
    dists = [r["distance"] for r in data["results"]]
    assert dists == sorted(dists)
    status, headers, body = _request(server, "GET", f"/image/{hostile}")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == (server["root"] / HOSTILE_LABEL / HOSTILE_NAME).read_bytes()
    assert _request(server, "GET", f"/thumb/{hostile}")[0] == 200
    link = idx.paths.index("circles/link.png")
    secret = server["secret"].read_bytes()
    for path in (f"/image/{link}", f"/thumb/{link}", "/image/../../etc/passwd", "/image/..%2F..%2Fetc%2Fpasswd",
                 "/image/-1", f"/image/{len(idx.paths)}", "/image/1e3", "/etc/passwd", "/../secret.png",
                 "/circles/circle_000.png", "/imgs/circles/added_later.jpg", f"/image/{server['secret']}"):
        status, _, body = _request(server, "GET", path)
        assert status == 404, path
        assert body != secret and b"root:" not in body
    assert "added_later.jpg" not in json.dumps(_paths(server))


def test_upload_finds_its_copy_first(server: dict) -> None:
    data = (server["root"] / "triangles" / "triangle_002.png").read_bytes()
    body, headers = _multipart(data, filename="<b>mine</b>.png")
    status, _, out = _request(server, "POST", "/search?format=json", body, headers)
    result = json.loads(out)
    assert status == 200 and result["results"][0]["path"] == "triangles/triangle_002.png"
    assert result["results"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
    status, _, page = _request(server, "POST", "/search", body, headers)
    assert status == 200 and "&lt;b&gt;mine&lt;/b&gt;.png" in page.decode() and "<b>mine" not in page.decode()
    assert page.decode().count("d=0.0000") >= 1


def test_a_query_vector_is_searched_through_the_json_api(server: dict) -> None:
    """Issue 24, 4: no query by vector (clip-back's embedding query) in plm serve's API."""
    from plm.search import EmbeddingStore, SearchIndex

    store = EmbeddingStore.load(server["tmp"] / "e.npz")
    i = store.paths.index("triangles/triangle_002.png")
    vector = store.vectors[i]
    body = json.dumps({"vector": [float(v) for v in vector], "k": 3}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    status, reply_headers, out = _request(server, "POST", "/api/search", body, headers)
    result = json.loads(out)
    assert status == 200 and reply_headers["Content-Type"] == "application/json", out
    assert len(result["results"]) == 3 and result["results"][0]["path"] == "triangles/triangle_002.png"
    assert result["distance"] == "1 - cosine similarity"
    assert result["results"][0]["distance"] == pytest.approx(0, abs=1e-4)
    dist, ids = SearchIndex.load(server["idx"]).index.search(vector[None, :], 3)
    assert [r["id"] for r in result["results"]] == ids[0].tolist()
    bad = [({"vector": [1.0, 2.0]}, 400, f"list of {store.dim} numbers"), ({"vec": []}, 400, '"vector"'),
           ({"vector": [0.0] * store.dim}, 400, "not all zero"), ({"vector": ["x"] * store.dim}, 400, "numbers only"),
           ({"vector": [1e39] * store.dim}, 400, "finite"), ({"vector": [1.0] * store.dim, "k": 0}, 400, '"k"')]
    for payload, code, needle in bad:
        data = json.dumps(payload).encode()
        status, _, out = _request(server, "POST", "/api/search", data,
                                  {"Content-Type": "application/json", "Content-Length": str(len(data))})
        assert status == code and needle in json.loads(out)["error"], (payload, out)
    status, _, out = _request(server, "POST", "/api/search", b"{not json",
                              {"Content-Type": "application/json", "Content-Length": "9"})
    assert status == 400 and "not JSON" in json.loads(out)["error"]
    status, _, out = _request(server, "POST", "/api/search", body, {**headers, "Content-Type": "text/plain"})
    assert status == 415
    status, _, out = _request(server, "POST", "/api/search", body, {**headers, "Origin": "http://evil.example"})
    assert status == 403


def test_bad_uploads_get_clear_messages(server: dict) -> None:
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    assert len(buf.getvalue()) > MAX_UPLOAD_KB * 1024
    body, headers = _multipart(buf.getvalue())
    status, _, out = _request(server, "POST", "/search", body, headers)
    assert status == 413 and "larger than the 64 KB" in out.decode()
    body, headers = _multipart(b"%PDF-1.4 not an image at all")
    status, _, out = _request(server, "POST", "/search?format=json", body, headers)
    assert status == 400 and "not an image" in json.loads(out)["error"]
    body, headers = _multipart(b"")
    assert _request(server, "POST", "/search", body, headers)[0] == 400
    form = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "7"}
    status, _, out = _request(server, "POST", "/search", b"image=x", form)
    assert status == 400 and "multipart/form-data" in out.decode()
    body, headers = _multipart(b"x", field="other")
    assert _request(server, "POST", "/search", body, headers)[0] == 400
    assert _request(server, "POST", "/elsewhere", b"", {"Content-Length": "0"})[0] == 404


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_collection_is_searched_by_clicking_in_chromium(server: dict, tmp_path: Path) -> None:
    """Chromium opens the page, follows an image's link (a click), and shows the nearest images."""
    from helpers.browser import Elements

    def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    base = f"http://127.0.0.1:{server['port']}"
    home = chromium(base + "/", "--dump-dom")
    assert home.returncode == 0 and console(home.stderr) == [], home.stderr[-2000:]
    parser = Elements()
    parser.feed(home.stdout)
    assert not [a for t, a in parser.tags if t == "script"]
    links = [a["href"] for t, a in parser.tags if t == "a" and a.get("href", "").startswith("/similar?id=")]
    paths = _paths(server)
    hostile = paths.index(f"{HOSTILE_LABEL}/{HOSTILE_NAME}")
    assert f"/similar?id={hostile}" in links and len(links) == len(paths)
    page = chromium(base + f"/similar?id={hostile}", "--dump-dom")
    assert page.returncode == 0 and console(page.stderr) == [], page.stderr[-2000:]
    dom = page.stdout
    assert len(re.findall(r"#\d · d=\d\.\d{4}", dom)) == 5 and "#1 · d=0.0000" in dom
    assert "&lt;script&gt;alert(1)&lt;.png" in dom and "<script" not in dom
    parser = Elements()
    parser.feed(dom)
    thumbs = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(thumbs) == 6 and all(s.startswith("/thumb/") for s in thumbs)
    fetched = set()
    for _ in range(50):  # the browser fetched every thumbnail it shows, from the server, successfully
        fetched = set(re.findall(r'"GET (/thumb/\d+) HTTP/1.1" 200', server["log"].read_text()))
        if set(thumbs) <= fetched:
            break
        time.sleep(0.1)
    assert set(thumbs) <= fetched, (thumbs, fetched)
    shot = tmp_path / "similar.png"
    run = chromium(base + f"/similar?id={hostile}", f"--screenshot={shot}", "--window-size=1280,900")
    assert run.returncode == 0 and shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum() > 2000, "no coloured thumbnail visible"


def test_bounded_server_stops_by_itself(tmp_path: Path) -> None:
    """make_server(max_requests=N) shuts down after N requests (the library entry point)."""
    import threading

    from plm.search import SearchIndex
    from plm.search.index import VectorIndex
    from plm.search.server import SearchService, make_server

    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=1)
    rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    vecs = np.eye(3, 4, dtype=np.float32)
    idx = SearchIndex(VectorIndex.build(vecs, "exact"), rel, np.arange(3), str(root), {}, {0: "a", 1: "b", 2: "c"})
    server = make_server(SearchService(idx, root, k=2), "127.0.0.1", 0, max_requests=3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        srv = {"port": port}
        assert _request(srv, "GET", "/")[0] == 200
        status, _, body = _request(srv, "GET", "/api/similar?id=0")
        assert status == 200 and sorted(r["id"] for r in json.loads(body)["results"]) == [1, 2]
        body, headers = _multipart((root / rel[0]).read_bytes())
        status, _, out = _request(srv, "POST", "/search", body, headers)
        assert status == 503 and "uploads are disabled" in out.decode()  # no model given
        thread.join(timeout=20)
        assert not thread.is_alive()
    finally:
        server.shutdown() if thread.is_alive() else None
        server.server_close()
