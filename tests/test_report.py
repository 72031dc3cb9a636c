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
    assert list(frame["role"]) == ["base", "student (pruned)"]
    base, student = frame.iloc[0], frame.iloc[1]
    assert student["params"] < base["params"] and base["params_pct"] == 100.0
    for col in ("ppl_general", "ppl_domain", "forward_tok_s", "ttft_s", "gen_tok_s", "peak_mem_mib",
                "disk_mib"):
        assert base[col] > 0 and student[col] > 0, col
    assert student["task:pubmedqa_local"] == 0.4
    from studio.evaluation import model_bytes

    for role, row in (("base", base), ("student", student)):  # weights + activations of a pass
        assert row["peak_mem_mib"] >= round(model_bytes(session.get(role).model) / 2**20, 1), role
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


def test_earlier_states_keep_their_rows(tmp_path, tiny_session):
    """Distillation and LoRA merging change the student in place; the table still shows the
    pruned, distilled and LoRA-merged states side by side (remembered rows, no extra models)."""
    from studio.distill import DistillConfig, distill
    from studio.lora import LoraConfig, train_lora
    from studio.pruning import PruneConfig, apply

    session = tiny_session("llama")
    config = CompareConfig(eval_tokens=256, block=128, gen_tokens=2)
    apply(session, PruneConfig(mlp_ratio=0.5, method="l2", reconstruct=False, calib_source="",
                               calib_tokens=0))
    first = compare_models(session, config)
    assert list(first["role"]) == ["base", "student (pruned)"]
    distill(session, DistillConfig(steps=3, batch=1, block=64, eval_tokens=64, eval_every=0,
                                   save_every=100, lr=1e-3, run_name="d"))
    second = compare_models(session, config)
    assert list(second["role"]) == ["base", "student (pruned)", "student (pruned → distilled)"]
    ppl = dict(zip(second["role"], second["ppl_general"]))
    assert len(set(ppl.values())) == 3, ppl
    assert ppl["student (pruned)"] == first["ppl_general"].iloc[1]  # the remembered measurement
    assert second["params"].iloc[1] == second["params"].iloc[2] < second["params"].iloc[0]

    train_lora(session, LoraConfig(data="builtin:python-docs", steps=2, rank=4, alpha=8, lr=5e-3,
                                   block_len=32, batch_size=2, eval_every=0, gen_tokens=2,
                                   prompts=["Hi"], finish="merge"))
    third = compare_models(session, config)
    assert list(third["role"]) == ["base", "student (pruned)", "student (pruned → distilled)",
                                   "student (pruned → distilled → LoRA-merged)"]
    assert third["ppl_general"].nunique() == 4
    assert sorted(session.models) == ["base", "student"]  # rows are remembered, models are not
    assert session.path("compare", "rows.json").is_file()
    other = compare_models(session, CompareConfig(eval_tokens=128, block=128, gen_tokens=2))
    assert list(other["role"]) == ["base", "student (pruned → distilled → LoRA-merged)"]  # other settings
