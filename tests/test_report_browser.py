"""report.html in a real headless browser (Chromium): every figure loads and has a size.

Chromium comes from the Debian packages (.ci/run installs it). Where it is missing the test skips
with the install command, except on CI (CI=true or R3RL_REQUIRE_BROWSER=1), where it fails.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "run"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Appended to a copy of the report: once everything has loaded, each <img>'s state goes into the DOM.
CHECK = """<script>
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "r3rl-check";
  pre.textContent = JSON.stringify([...document.images].map(
    i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, shown: i.width})));
  document.body.appendChild(pre);
});
</script>"""


def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("R3RL_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium on this CI machine: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium); CI installs it and runs this test")
    return found


def headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_every_figure_of_the_report_loads_in_a_browser(tmp_path):
    from r3rl.reporting.report import build_report

    binary = browser()
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    report = build_report(run)
    page = report.read_text(encoding="utf-8")
    expected = len(re.findall(r"<img\b", page))
    assert expected >= 6  # the fixture's curves, accuracy bars and class figures
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    done = headless(binary, tmp_path / "profile", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="r3rl-check">(.*?)</pre>', done.stdout, flags=re.S)
    assert found, f"the page did not finish loading in {binary}: {done.stderr[-2000:]}"
    images = json.loads(html.unescape(found.group(1)))
    assert len(images) == expected
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 100 and i["height"] > 100)]
    assert not broken, f"figures that did not load: {broken}"
    # each figure fits the page (scaled down, never wider than the window)
    assert all(0 < i["shown"] <= 1280 for i in images)
    if os.environ.get("R3RL_SCREENSHOT"):  # to look at the page: R3RL_SCREENSHOT=/tmp/report.png pytest ...
        shot = Path(os.environ["R3RL_SCREENSHOT"])
        headless(binary, tmp_path / "profile", "--window-size=1280,9000", f"--screenshot={shot}", report.as_uri())
        assert shot.exists() and shot.stat().st_size > 10_000
