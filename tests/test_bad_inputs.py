"""A catalogue of bad inputs: each is answered with one actionable sentence, never a traceback, and
the session keeps working (same base model, a follow-up job and a perplexity still run).

Most cases call the engine (fast); a handful go through `python -m studio` and through the real
Gradio server (gradio_client), which are what a user actually sees.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from studio.errors import StudioError

ROOT = Path(__file__).resolve().parent.parent
# a message says what to do: one of these verbs (as the real messages word it)
HINTS = ("use", "give", "choose", "check", "lower", "pick", "unload", "tick", "raise", "fix", "move",
         "convert", "start", "load", "add", "connect", "re-download", "list", "keep", "distil",
         "create", "regenerate", "point", "remove", "rename", "allow", "shorten", "see", "install")


def assert_actionable(message: str) -> None:
    """One sentence, no traceback, a verb that tells the user what to do."""
    assert message and "\n" not in message.strip(), f"not one line: {message!r}"
    assert "Traceback" not in message and 'File "' not in message, message
    assert len(message) < 600, f"too long for one sentence: {message!r}"
    # one sentence: no ". X" sentence break outside the final full stop (paths/numbers allowed)
    assert not re.search(r"[a-z)\]]\. [A-Z][a-z]+ ", message.strip()[:-1]), f"several sentences: {message!r}"
    words = re.findall(r"(?<![\w])[a-z][a-z-]*(?![\w])", message.lower())  # not inside identifiers
    assert any(h in words for h in HINTS), f"no hint of what to do: {message!r}"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_dir):
    """One session shared by every engine case (it must survive them all), plus bad files."""
    from studio.data import token_blocks
    from studio.evaluation import perplexity
    from studio.session import Session

    root = tmp_path_factory.mktemp("bad")
    tiny = tiny_dir("llama")
    session = Session(root / "workspace", device="cpu")
    base = session.load(str(tiny))
    text = root / "good.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    blocks = token_blocks(base.tokenizer, str(text), 32, 64)
    files = _bad_files(root, tiny)
    return SimpleNamespace(root=root, tiny=tiny, session=session, text=text, blocks=blocks,
                           files=files, ppl=perplexity(base.model, blocks),
                           fingerprint=base.fingerprint(), checksum=_checksum(base.model))


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _bad_files(root: Path, tiny: Path) -> dict[str, Path]:
    """Every broken file/folder the cases need, made once."""
    from transformers import (AutoConfig, AutoModelForCausalLM, BertConfig, GPT2Config)

    f: dict[str, Path] = {}
    f["not_ckpt"] = root / "not-a-checkpoint"
    f["not_ckpt"].mkdir()
    (f["not_ckpt"] / "notes.md").write_text("just notes")
    f["no_weights"] = root / "no-weights"
    f["no_weights"].mkdir()
    shutil.copy(tiny / "config.json", f["no_weights"] / "config.json")
    f["pickle_only"] = root / "pickle-only"
    f["pickle_only"].mkdir()
    shutil.copy(tiny / "config.json", f["pickle_only"] / "config.json")
    (f["pickle_only"] / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    for name, mutate in (("truncated_st", "truncate"), ("corrupt_st", "garbage")):
        folder = root / name
        shutil.copytree(tiny, folder)
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2] if mutate == "truncate" else b"\x13\x37" * 4096)
        f[name] = folder
    from studio.models.loading import default_gguf_path

    f["truncated_gguf"] = root / "cut.gguf"
    with open(default_gguf_path(), "rb") as src:
        f["truncated_gguf"].write_bytes(src.read(1 << 20))
    for name, config in (("gpt2", GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100,
                                                bos_token_id=0, eos_token_id=0)),
                         ("bert", BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                             intermediate_size=64, vocab_size=100))):
        f[name] = root / name
        config.save_pretrained(f[name])
    other = AutoConfig.from_pretrained(tiny)
    other.vocab_size = 1000
    f["other_vocab"] = root / "other-vocab"
    AutoModelForCausalLM.from_config(other).save_pretrained(f["other_vocab"])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, f["other_vocab"] / name)
    f["empty_txt"] = root / "empty.txt"
    f["empty_txt"].write_text("   \n")
    f["binary_txt"] = root / "binary.txt"
    f["binary_txt"].write_bytes(bytes(range(256)) * 8)
    f["latin1_txt"] = root / "latin1.txt"
    f["latin1_txt"].write_bytes("Café crème, déjà vu à Noël.\n".encode("latin-1") * 20)
    f["jsonl"] = root / "records.jsonl"
    f["jsonl"].write_text("\n".join(json.dumps({"body": f"record {i} text"}) for i in range(20)))
    f["broken_jsonl"] = root / "broken.jsonl"
    f["broken_jsonl"].write_text('{"text": "fine"}\n{"text": "cut off\n{"text": "fine"}\n')
    f["csv"] = root / "table.csv"
    f["csv"].write_text("question,answer\nwhat,that\nwho,them\n")
    recipes = {"unknown_key": {"steps": [{"step": "load", "model": "default"}], "colour": "red"},
               "wrong_order": {"steps": [{"step": "load", "model": "default"},
                                         {"step": "lora", "data": "builtin:python-docs"},
                                         {"step": "prune", "mlp_ratio": 0.2}]},
               "load_not_first": {"steps": [{"step": "prune", "mlp_ratio": 0.2},
                                            {"step": "load", "model": "default"}]},
               "unknown_setting": {"steps": [{"step": "load", "model": "default"},
                                             {"step": "prune", "mlp_ratio": 0.2, "sparsity": 0.5}]},
               "export_middle": {"steps": [{"step": "load", "model": "default"},
                                           {"step": "export", "name": "x"},
                                           {"step": "prune", "mlp_ratio": 0.2}]}}
    import yaml

    for name, doc in recipes.items():
        f[f"recipe_{name}"] = root / f"{name}.yaml"
        f[f"recipe_{name}"].write_text(yaml.safe_dump(doc))
    f["recipe_bad_yaml"] = root / "bad.yaml"
    f["recipe_bad_yaml"].write_text("steps: [\n  - step: load\n   model: : default\n")
    f["workspace_file"] = root / "a-file-not-a-folder"
    f["workspace_file"].write_text("x")
    return f


# ------------------------------------------------------------------------------ engine cases
def _load(spec, **kw):
    return lambda c: c.session.load(str(c.files[spec]) if spec in c.files else spec, **kw)


def _blocks(spec, block=32, tokens=64):
    def call(c):
        from studio.data import token_blocks

        source = spec.format(**{k: str(v) for k, v in c.files.items()}, good=str(c.text))
        token_blocks(c.session.get().tokenizer, source, block, tokens)
    return call


def _prune(**settings):
    def call(c):
        from studio.pruning import PruneConfig, apply

        config = PruneConfig(calib_source=str(c.text), calib_tokens=64, calib_block=32,
                             reconstruct=False, **settings)
        apply(c.session, config)
    return call


def _distill_other_vocab(c):
    from studio.distill import DistillConfig, distill
    from studio.models.loading import load_model

    c.session.set_model("student", load_model(str(c.files["other_vocab"]), device="cpu"))
    try:
        distill(c.session, DistillConfig(data=str(c.text), steps=2, batch=1, block=32, eval_tokens=32,
                                         run_name="vocab"))
    finally:
        c.session.unload("student")


def _distill(**settings):
    def call(c):
        from studio.distill import DistillConfig, start_distillation

        start_distillation(c.session, DistillConfig(data=str(c.text), block=32, eval_tokens=32,
                                                    **settings), resume=settings.get("run_name") == "nope")
    return call


def _lora(**settings):
    def call(c):
        from studio.lora import LoraConfig, start_lora

        start_lora(c.session, LoraConfig(data=str(c.text), steps=1, block_len=32, **settings))
    return call


def _export(name, make_existing=False):
    def call(c):
        from studio.export import ExportConfig, export_model

        if make_existing:
            c.session.path("exports", name).mkdir(parents=True, exist_ok=True)
        export_model(c.session, ExportConfig(name=name.replace("{root}", str(c.root)), eval_source=""))
    return call


def _recipe(name):
    def call(c):
        from studio.recipe import load_recipe

        load_recipe(c.files[f"recipe_{name}"])
    return call


def _workspace(kind):
    def call(c):
        from studio.session import Session

        Session(c.files["workspace_file"] if kind == "file" else "/proc/tailor-studio-ws")
    return call


def _oom_load(c):
    from studio.session import Session

    Session(c.root / "ws-oom", device="cpu", memory_limit_bytes=1 << 20).load(str(c.tiny))


def _oom_copy(c):
    from studio.session import Session

    small = Session(c.root / "ws-oom2", device="cpu", memory_limit_bytes=40 << 20)
    small.load(str(c.tiny))  # fits once, not twice
    _prune(mlp_ratio=0.25)(SimpleNamespace(**{**vars(c), "session": small}))


def _job(c):
    c.session.jobs.get("20990101-000000-999")


ENGINE_CASES = {
    # models
    "hub-unknown-id": (_load("nobody-xyz/no-such-model-anywhere"), "Hub"),
    "spec-not-a-path-or-id": (_load("no such model"), "spelling"),
    "spec-empty": (_load(""), "default"),
    "folder-not-checkpoint": (_load("not_ckpt"), "not a checkpoint"),
    "checkpoint-without-weights": (_load("no_weights"), "no weights"),
    "pickle-weights-refused": (_load("pickle_only"), "pickle"),
    "safetensors-truncated": (_load("truncated_st"), "corrupt or truncated"),
    "safetensors-corrupt": (_load("corrupt_st"), "corrupt or truncated"),
    "gguf-truncated": (_load("truncated_gguf"), "GGUF"),
    "gguf-missing": (_load("/nowhere/model.gguf"), "does not exist"),
    "architecture-gpt2": (_load("gpt2"), "gpt2"),
    "encoder-only-bert": (_load("bert"), "bert"),
    "dtype-unknown": (lambda c: c.session.load(str(c.tiny), dtype="float8"), "float8"),
    # data
    "text-empty": (_blocks("{empty_txt}"), "empty"),
    "text-binary": (_blocks("{binary_txt}"), "binary"),
    "text-not-utf8": (_blocks("{latin1_txt}"), "UTF-8"),
    "text-missing-file": (_blocks("/nowhere/corpus.txt"), "does not exist"),
    "jsonl-missing-field": (_blocks("{jsonl}#text"), "body"),
    "jsonl-broken-line": (_blocks("{broken_jsonl}"), "broken.jsonl"),
    "csv-missing-column": (_blocks("{csv}#context"), "question"),
    "template-missing-field": (_blocks("{csv}#{{question}} {{explanation}}"), "explanation"),
    "field-on-plain-text": (_blocks("{good}#text"), "jsonl"),
    "builtin-unknown": (_blocks("builtin:wikipedia"), "python-docs"),
    "token-budget-zero": (_blocks("{good}", tokens=0), "positive"),
    "token-budget-too-large": (_blocks("{good}", tokens=10 ** 6), "at most"),
    "token-budget-below-block": (_blocks("{good}", block=64, tokens=32), "block"),
    # pruning
    "prune-mlp-fraction-one": (_prune(mlp_ratio=1.0), "mlp_ratio"),
    "prune-mlp-fraction-negative": (_prune(mlp_ratio=-0.1), "mlp_ratio"),
    "prune-head-fraction-one": (_prune(head_ratio=1.0), "head_ratio"),
    "prune-every-head": (_prune(head_ratio=0.9, head_mode="groups"), "head"),
    "prune-every-layer": (_prune(layers=4), "4 layers"),
    "prune-layer-that-does-not-exist": (_prune(layers=1, layer_method="manual", layer_list=[7]), "[7]"),
    "prune-unknown-method": (_prune(mlp_ratio=0.2, method="astrology"), "astrology"),
    "prune-nothing": (_prune(mlp_ratio=0.001), "remove nothing"),
    # distillation and LoRA
    "distill-different-vocab": (_distill_other_vocab, "vocabulary"),
    "distill-zero-steps": (_distill(steps=0), "steps"),
    "distill-resume-missing-run": (_distill(run_name="nope"), "nope"),
    "lora-target-missing": (_lora(targets=["nonexistent_proj"]), "nonexistent_proj"),
    "lora-rank-zero": (_lora(rank=0), "rank"),
    # export
    "export-name-dotdot": (_export("../escape"), "'..'"),
    "export-name-absolute": (_export("{root}/abs"), "'/'"),
    "export-folder-exists": (_export("taken", make_existing=True), "already exists"),
    "workspace-path-dotdot": (lambda c: c.session.path("..", "x"), "'..'"),
    # workspace, recipes, memory, jobs
    "workspace-is-a-file": (_workspace("file"), "not writable"),
    "workspace-unwritable": (_workspace("proc"), "not writable"),
    "recipe-unknown-key": (_recipe("unknown_key"), "colour"),
    "recipe-wrong-order": (_recipe("wrong_order"), "move it earlier"),
    "recipe-load-not-first": (_recipe("load_not_first"), "first"),
    "recipe-export-not-last": (_recipe("export_middle"), "last"),
    "recipe-unknown-setting": (_recipe("unknown_setting"), "sparsity"),
    "recipe-invalid-yaml": (_recipe("bad_yaml"), "YAML"),
    "out-of-memory-load": (_oom_load, "Out of memory"),
    "out-of-memory-copy": (_oom_copy, "copying"),
    "job-unknown-id": (_job, "job list"),
}


def assert_session_usable(c) -> None:
    from studio.evaluation import perplexity

    base = c.session.get()
    assert base.fingerprint() == c.fingerprint and _checksum(base.model) == c.checksum
    assert c.session.status()["models"].keys() == {"base"}
    assert perplexity(base.model, c.blocks) == pytest.approx(c.ppl, rel=1e-5)
    job = c.session.submit("follow-up", lambda j: 42, heavy=True).wait(60)
    assert (job.status, job.result) == ("done", 42)


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_engine_bad_input(ctx, case):
    call, expected = ENGINE_CASES[case]
    with pytest.raises(StudioError) as err:
        call(ctx)
    message = str(err.value)
    print(f"[{case}] {message}")  # the catalogue of messages, with pytest -s
    assert expected.lower() in message.lower(), message
    assert_actionable(message)
    assert_session_usable(ctx)


def test_catalogue_size():
    assert len(ENGINE_CASES) + len(CLI_CASES) + len(UI_CASES) >= 30


# ------------------------------------------------------------------------------ CLI cases
CLI_CASES = {
    "cli-folder-not-checkpoint": (["info", "--model", "{not_ckpt}"], "not a checkpoint"),
    "cli-hub-unreachable": (["info", "--model", "nobody-xyz/no-such-model"], "Hub"),
    "cli-unsupported-architecture": (["info", "--model", "{gpt2}"], "gpt2"),
    "cli-text-not-utf8": (["ppl", "--model", "{tiny}", "--text", "{latin1_txt}"], "UTF-8"),
    "cli-prune-fraction-out-of-range": (["prune", "--model", "{tiny}", "--mlp", "1.5", "--out",
                                         "{root}/pruned"], "mlp_ratio"),
    "cli-export-name-dotdot": (["export", "--model", "{tiny}", "--name", "../x"], "'..'"),
    "cli-recipe-unknown-key": (["run", "{recipe_unknown_key}"], "colour"),
    "cli-workspace-unwritable": (["info", "--model", "{tiny}", "--workspace", "/proc/tailor-ws"],
                                 "not writable"),
    "cli-bad-argument": (["ppl", "--model", "{tiny}", "--text", "{good}", "--max-tokens", "0"],
                         "positive"),
}


@pytest.fixture(scope="module")
def cli_runs(ctx, tmp_path_factory):
    """Every CLI case as its own `python -m studio` process, started together (each costs ~10 s of
    imports; two at a time save some wall time) -> {case: (returncode, stdout, stderr)}."""
    tmp = tmp_path_factory.mktemp("cli")
    names = {**{k: str(v) for k, v in ctx.files.items()}, "tiny": str(ctx.tiny), "root": str(tmp),
             "good": str(ctx.text)}
    env = {**os.environ, "STUDIO_QUIET": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    pending, done = dict(CLI_CASES), {}
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < 2:
            case, (argv, _) = pending.popitem()
            argv = [a.format(**names) for a in argv]
            if "--workspace" not in argv:
                argv += ["--workspace", str(tmp / f"ws-{case}")]
            running[case] = subprocess.Popen([sys.executable, "-m", "studio", *argv], cwd=ROOT, env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        case = next(iter(running))
        out, err = running[case].communicate(timeout=300)
        done[case] = (running.pop(case).returncode, out, err)
    return done


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(cli_runs, case):
    code, stdout, stderr = cli_runs[case]
    expected = CLI_CASES[case][1]
    assert code != 0, stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and expected.lower() in lines[0].lower(), lines[0]
    print(f"[{case}] exit {code}: {lines[0]}")
    assert_actionable(lines[0][len("error: "):])
    assert stdout.strip() == ""


# ------------------------------------------------------------------------------ UI cases
UI_CASES = {
    "ui-load-missing-folder": (("/nowhere/model-folder", "auto", False, False), "/load_model",
                               "spelling"),
    "ui-load-not-checkpoint": (("{not_ckpt}", "auto", False, False), "/load_model", "not a checkpoint"),
    "ui-load-encoder-only": (("{bert}", "auto", False, False), "/load_model", "bert"),
    "ui-export-name-dotdot": (("../outside", "working", False), "/export_model", "'..'"),
    "ui-job-unknown-id": (("no-such-job",), "/job_status", "job list"),
}


def _summary_and_answer(client) -> tuple[dict, dict]:
    """Two real calls on the served session: the working model's summary and a 2-token generation."""
    summary, _ = client.predict(api_name="/model_summary")
    _, timing = client.predict("Hello", 2, "working", api_name="/generate")
    return summary, timing


@pytest.mark.parametrize("case", list(UI_CASES))
def test_ui_bad_input(ctx, client, case):
    from gradio_client.exceptions import AppError

    args, api, expected = UI_CASES[case]
    args = tuple(a.format(**{k: str(v) for k, v in ctx.files.items()}) if isinstance(a, str) else a
                 for a in args)
    before = client.predict(api_name="/session_status")["models"]
    summary_before, _ = _summary_and_answer(client)
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=api)
    message = str(err.value)
    assert expected.lower() in message.lower(), message
    assert_actionable(message)
    # the session still answers, with the model it had (the server preloads the default model)
    after = client.predict(api_name="/session_status")
    assert after["models"]["base"]["spec"] == "default", after["models"]
    assert after["models"].keys() == before.keys()
    assert {r: m["spec"] for r, m in after["models"].items()} == \
        {r: m["spec"] for r, m in before.items()}
    summary_after, timing = _summary_and_answer(client)
    keys = ("spec", "family", "params", "layers", "fingerprint", "device")
    assert {k: summary_after[k] for k in keys} == {k: summary_before[k] for k in keys}
    assert timing["new_tokens"] > 0, timing
