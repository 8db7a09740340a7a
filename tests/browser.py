"""Open a page in a real headless Chromium (Debian's package, installed by .ci/run) and report what a person
would see: whether every image loaded, any script or console errors, and a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]

# Injected first in <head>: records errors (script errors, failed resources, console.error) and, after load,
# writes what it saw into the DOM for --dump-dom to read back.
PROBE = """<script>
window.__leapErrors = [];
window.addEventListener('error', function (e) {
  window.__leapErrors.push(e.message || ('failed to load ' + ((e.target && (e.target.src || e.target.href)) || '?')));
}, true);
(function () { var ce = console.error; console.error = function () {
  window.__leapErrors.push(Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var out = document.createElement('pre'); out.id = '__leap_probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__leapErrors,
                                    svgs: document.querySelectorAll('svg').length, text: document.body.innerText.length});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def open_page(page: Path, tmp: Path) -> tuple[dict, Path]:
    """(what the probe saw, screenshot path) for ``page``."""
    exe = chromium()
    assert exe, "chromium is not installed (.ci/run installs Debian's chromium)"
    html = page.read_text(encoding="utf-8")
    probed = tmp / f"probed-{page.name}"
    probed.write_text(re.sub(r"<head>", "<head>" + PROBE, html, count=1), encoding="utf-8")
    profile = tmp / "chromium-profile"
    common = [exe, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="__leap_probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium: {dom.stderr[-2000:]}"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    shot = tmp / f"{page.stem}.png"
    subprocess.run([*common, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists(), "Chromium wrote no screenshot"
    return seen, shot


def is_blank(png: Path) -> bool:
    """True when the screenshot is (nearly) one colour."""
    import cv2

    img = cv2.imread(str(png))
    return img is None or float(np.std(img)) < 5.0 or len(np.unique(img.reshape(-1, 3)[::97], axis=0)) < 4
