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


def test_export_cli_writes_verified_folder(tiny_dir, tmp_path):
    """`python -m studio export --zip`: exit 0, one JSON object with the verification, a folder
    plain transformers loads (same logits as the source checkpoint) and its zip."""
    import zipfile

    import torch
    from transformers import AutoModelForCausalLM

    model = tiny_dir("llama")
    out = studio("export", "--model", str(model), "--name", "tiny-export", "--eval-tokens", "512",
                 "--zip", "--workspace", str(tmp_path), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    folder = tmp_path / "exports" / "tiny-export"
    assert info["folder"] == str(folder.resolve())
    assert info["verification"]["passed"] and info["verification"]["max_abs_diff"] < 1e-4
    assert info["perplexity"] > 1 and info["eval_tokens"] == 512
    assert {"model.safetensors", "config.json", "recipe.yaml", "README.md",
            "export_info.json"} <= set(info["files"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    source = AutoModelForCausalLM.from_pretrained(model).eval()
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, source(ids).logits, atol=1e-5)
    assert "tiny-export/model.safetensors" in zipfile.ZipFile(info["zip"]).namelist()
    again = studio("export", "--model", str(model), "--name", "tiny-export", "--eval-source", "",
                   "--workspace", str(tmp_path), "--device", "cpu")
    assert again.returncode == 2 and "already exists" in again.stderr  # no silent overwrite
