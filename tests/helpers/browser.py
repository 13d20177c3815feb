"""Rendering plm's pages in headless Chromium and checking them thoroughly (skipped where it is missing)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
HOSTILE_NAME = "<script>alert(1)<.png"
HOSTILE_LABEL = "<img src=x onerror=alert(2)>"
# Appended to a copy of each page: once loaded, it records every image's decode state on <body>.
# It carries a nonce that the copy's CSP allows; the page's own policy stays in force otherwise.
PROBE = ("<script nonce=\"plmprobe\">window.addEventListener('load',()=>{document.body.setAttribute('data-probe',"
         "JSON.stringify(Array.from(document.images).map(i=>[i.complete,i.naturalWidth,i.naturalHeight])))})</script>")


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console(stderr: str) -> list[str]:
    """Messages the page itself logged: script errors, CSP violations, failed loads."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Failed to load resource" in line]


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


def check_page(page: Path, tmp: Path, min_images: int) -> str:
    """Render ``page`` in Chromium and check it thoroughly; returns the dumped DOM.

    One run loads a probed copy of the page (its CSP kept, plus a nonce for the probe script) and
    dumps the DOM: no console message (script error, CSP violation, failed load), no script but the
    probe, no event-handler attribute, every <img> a ``data:`` URI decoding to a non-blank picture
    and decoded by the browser. A second run screenshots the page itself.
    """
    text = page.read_text(encoding="utf-8")
    assert "default-src 'none'" in text, "the page lost its Content-Security-Policy"
    probe_page = tmp / f"probe-{page.name}"
    probe_page.write_text(text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-plmprobe';")
                          .replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dump = chromium(probe_page, tmp, "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert console(dump.stderr) == [], console(dump.stderr)
    dom = dump.stdout
    parser = Elements()
    parser.feed(dom)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert len(scripts) == 1 and scripts[0].get("nonce") is not None, "a <script> element made it into the page"
    assert not [a for t, a in parser.tags if any(k.startswith("on") for k in a)], "an event-handler attribute exists"
    images = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(images) >= min_images
    for src in images:
        assert src.startswith("data:image/"), src[:80]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
        assert np.asarray(img, dtype=np.float32).std() > 2.0, "an embedded image is blank"
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the load event never fired"
    states = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(states) == len(images) and all(ok and w > 0 and h > 0 for ok, w, h in states), states

    shot = tmp / f"{page.stem}.png"
    run = chromium(page, tmp, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert console(run.stderr) == [], console(run.stderr)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1280) and pixels.std() > 15, "the screenshot is (nearly) blank"
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert coloured.sum() > 2000, "no coloured figure or thumbnail visible"
    return dom
