"""Comparison table, charts and the stakeholder HTML report (opened in headless Chromium)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from studio.compare import CompareConfig, compare_models, save_csv, side_by_side
from studio.report import write_report

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report_session(tiny_dir, tmp_path_factory):
    """Base + a pruned student (tiny llama), compared, with side-by-side generations."""
    from studio.pruning import PruneConfig, apply
    from studio.session import Session

    session = Session(tmp_path_factory.mktemp("report") / "workspace", device="cpu")
    session.load(str(tiny_dir("llama")))
    apply(session, PruneConfig(mlp_ratio=0.5, method="l2", reconstruct=False, calib_source="",
                               calib_tokens=0))
    session.cache.setdefault("lm_eval", {})[session.get("student").fingerprint()] = {"pubmedqa_local": 0.4}
    frame = compare_models(session, CompareConfig(eval_tokens=256, block=128, gen_tokens=4,
                                                  domain_source="builtin:python-docs"))
    gens = side_by_side(session, "Say hello.", max_new_tokens=6)
    return session, frame, gens


def test_comparison_table_and_report_file(report_session):
    session, frame, gens = report_session
    assert list(frame["role"]) == ["base", "student"]
    base, student = frame.iloc[0], frame.iloc[1]
    assert student["params"] < base["params"] and base["params_pct"] == 100.0
    for col in ("ppl_general", "ppl_domain", "forward_tok_s", "ttft_s", "gen_tok_s", "peak_mem_mib",
                "disk_mib"):
        assert base[col] > 0 and student[col] > 0, col
    assert student["task:pubmedqa_local"] == 0.4
    csv = save_csv(session, frame)
    assert csv.read_text().startswith("role,params")
    assert [g["role"] for g in gens] == ["base", "student"] and all(g["new_tokens"] > 0 for g in gens)
    path = write_report(session, frame, gens)
    text = path.read_text()
    assert len(text) > 1_000_000  # plotly.js inline
    assert not re.search(r"<script[^>]*\ssrc=[\"']?https?:", text)  # no external scripts
    assert "step: prune" in text and "Say hello." in text and "fewer" in text


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_session, tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    from PIL import Image, ImageStat
    from playwright.sync_api import sync_playwright

    session, frame, gens = report_session
    path = write_report(session, frame, gens)
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_selector("svg.main-svg", timeout=30_000)
            figures = page.locator(".plotly-graph-div").count()
            bars = page.locator("g.trace.bars").count()
            page.locator("#figure-1").scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert figures == 6 and bars >= 4
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
    image = Image.open(shot).convert("L")
    stat = ImageStat.Stat(image)
    assert stat.stddev[0] > 10 and len(image.getcolors(1 << 16) or range(1 << 16)) > 20
