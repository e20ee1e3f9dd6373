"""The report in a real headless browser (Debian's chromium).

Every figure decodes, and no script ever runs.

The report runs no script of its own, so a small harness page (written here, outside the
report) loads it in an iframe and reads its DOM: Chromium's ``--allow-file-access-from-files``
makes the two ``file://`` pages one origin. The harness counts the decoded figures, and reads a
marker that any injected script or event handler would set. A control page — the same payload
unescaped, under a policy that allows inline script — shows the marker is set when a script does
run, so a quiet marker means something.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cli_support import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
    "--allow-file-access-from-files",
]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (make test installs Debian's chromium)"
)

MARK = "document.body.setAttribute('data-ran', 'yes')"
PAYLOAD = (
    f'<script>{MARK}</script><img src=x onerror="{MARK}"><svg onload="{MARK}"></svg>'
    f'"><script>{MARK}</script>'
)

HARNESS = """<!DOCTYPE html><html><body><iframe id="report" src="{src}"></iframe><script>
document.getElementById('report').addEventListener('load', function () {{
  var d = this.contentDocument;
  if (!d) {{ document.body.setAttribute('data-result', 'unreadable'); return; }}
  var imgs = Array.prototype.slice.call(d.querySelectorAll('figure img'));
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  var scripts = d.querySelectorAll('script').length;
  document.body.setAttribute('data-result', ok + '/' + imgs.length + ' scripts=' + scripts
                             + ' ran=' + (d.body.getAttribute('data-ran') || 'no'));
}});
</script></body></html>
"""


def inspect(page: Path, profile: Path) -> str:
    """``decoded/figures scripts=N ran=yes|no`` for ``page``, read by the harness in Chromium."""
    harness = profile.parent / f"harness-{page.stem}.html"
    harness.write_text(HARNESS.format(src=page.resolve().as_uri()))
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", harness.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'data-result="([^"]*)"', dom)
    assert found, dom[:500]
    return found.group(1)


@pytest.fixture(scope="module")
def report(demo_run) -> Path:
    return demo_run[0] / "report.html"


@needs_chromium
def test_report_renders_every_figure_and_runs_no_script(report, tmp_path):
    # Networks 6, studies 2 each, zoo
    assert inspect(report, tmp_path / "profile") == "13/13 scripts=0 ran=no"
    dom = report.read_text()
    for figure in (
        "fig-predictive",
        "fig-points",
        "fig-sensitivity",
        "fig-trajectories",
        "fig-spectrum",
        "fig-training",
        "fig-capacity",
        "fig-cover",
        "fig-reinit",
        "fig-noise",
        "fig-zoo-scatter",
        "fig-traversal",
    ):
        assert f'id="{figure}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 50_000  # a page with pictures, not a blank one


class Tags(HTMLParser):
    """Every element name, every event-handler attribute and all text of a page.

    As a browser parses it.
    """

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()
        self.handlers: list[tuple[str, str]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.names.add(tag)
        self.handlers += [(tag, name) for name, _ in attrs if name.lower().startswith("on")]

    def handle_data(self, data):
        self.text += data


def crafted_metrics(metrics: dict) -> dict:
    """The demo's metrics with script in every kind of field that reaches the page."""
    crafted = json.loads(json.dumps(metrics))
    crafted["run"] = {"data": PAYLOAD, PAYLOAD: PAYLOAD, "seconds": PAYLOAD}
    crafted["networks"] = {f"{name}{PAYLOAD}": net for name, net in crafted["networks"].items()}
    net = next(iter(crafted["networks"].values()))
    net["action"], net["lambda"] = PAYLOAD, PAYLOAD
    net["measures"]["path_skipped"] = PAYLOAD
    net["measures"]["num_params"] = PAYLOAD
    studies = crafted["studies"]
    zoo = studies["zoo"]
    zoo.update(
        kept=PAYLOAD,
        models=PAYLOAD,
        n_test=PAYLOAD,
        min_ess=PAYLOAD,
        varied=[*zoo["varied"], PAYLOAD],
    )
    for entry in zoo["leaderboard"]:
        entry.update(models=PAYLOAD, environments=PAYLOAD, measure=entry["measure"] + PAYLOAD)
    zoo["points"] = {name + PAYLOAD: points for name, points in zoo["points"].items()}
    studies["capacity"]["anchor"].update(d=PAYLOAD, two_d=PAYLOAD)
    studies["robustness"]["kendall_pooled"]["num_layers"] = PAYLOAD
    studies["robustness"]["labels"] = [PAYLOAD for _ in studies["robustness"]["labels"]]
    for row in studies["disentanglement"]["table"]:
        row["seed"], row["active_latents"] = PAYLOAD, PAYLOAD
    return crafted


def test_crafted_metrics_reach_the_page_only_as_text(demo_run, tmp_path):
    run, _ = demo_run
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    (crafted / "metrics.json").write_text(
        json.dumps(crafted_metrics(json.loads((run / "metrics.json").read_text())))
    )
    result = run_cli("report", "crafted", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (crafted / "report.html").read_text()
    tags = Tags()
    tags.feed(page)
    assert "script" not in tags.names and not tags.handlers, tags.handlers
    # The payload is there, as text
    assert {"img", "table", "figure"} <= tags.names and tags.text.count(PAYLOAD) > 20
    assert "script-src 'none'" in page
    if CHROMIUM is not None:
        assert inspect(crafted / "report.html", tmp_path / "profile").endswith("scripts=0 ran=no")


@needs_chromium
def test_the_harness_sees_a_script_that_does_run(tmp_path):
    """Control: the payload unescaped under a permissive policy sets the marker (detector works)."""
    page = tmp_path / "unsafe.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        'content="default-src '
        "'none'; script-src 'unsafe-inline'\"></head><body><figure><img "
        f"src=x></figure>{PAYLOAD}</body></html>"
    )
    assert inspect(page, tmp_path / "profile").endswith("ran=yes")
