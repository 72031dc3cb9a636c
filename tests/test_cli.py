"""The headless face: one JSON object on stdout, one-line errors, no tracebacks."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def studio(*args, timeout=600):
    env = {**os.environ, "STUDIO_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_info_and_ppl_print_json(tiny_dir, tmp_path):
    model = str(tiny_dir("qwen3"))
    out = studio("info", "--model", model, "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["family"] == "qwen3" and info["layers"] == 4
    out = studio("ppl", "--model", model, "--text", "builtin:python-docs", "--max-tokens", "256",
                 "--window", "64", "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tokens"] == 256 and result["perplexity"] > 1


@pytest.mark.parametrize("args,needle", [
    (["ppl", "--model", "./nope", "--text", "x"], "neither an existing path"),
    (["ppl", "--max-tokens", "zero", "--text", "x"], "not a whole number"),
    (["info", "--dtype", "float99"], "Unknown dtype"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line(args, needle, tmp_path):
    out = studio(*args, "--workspace", str(tmp_path)) if args[0] != "frobnicate" else studio(*args)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_studio_engine_imports_without_gradio():
    code = ("import sys; sys.modules['gradio'] = None\n"
            "import studio.session, studio.stats, studio.hooks, studio.data, studio.evaluation\n"
            "import pkgutil, importlib, studio\n"
            "for m in pkgutil.walk_packages(studio.__path__, 'studio.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
