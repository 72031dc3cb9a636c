"""Command registry: every module in this package with `add_arguments` and `run` is a command.

A command's `run(args, progress) -> dict` calls the engine; the dict is printed as JSON on
stdout, progress goes to stderr, and a StudioError becomes one line on stderr with exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import sys
import time

from studio.errors import StudioError

log = logging.getLogger("studio")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we promise one line
        sys.stderr.write(f"error: {message} (see `python -m studio {self.prog.split()[-1]} --help`)\n")
        raise SystemExit(2)


def stderr_progress(fraction: float, message: str = "") -> None:
    if os.environ.get("STUDIO_QUIET"):
        return
    sys.stderr.write(f"[{fraction * 100:5.1f}%] {message}\n")
    sys.stderr.flush()


def commands() -> dict:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            found[getattr(module, "NAME", info.name)] = module
    return dict(sorted(found.items()))


def build_parser(found: dict) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="studio", description="Tailor Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for name, module in found.items():
        cmd = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(cmd)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("STUDIO_LOG", "WARNING"), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr carries our progress lines and one-line errors only
    found = commands()
    args = build_parser(found).parse_args(argv)
    started = time.time()
    try:
        result = found[args.command].run(args, stderr_progress)
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:  # never a traceback for the user; the log has it with STUDIO_LOG=DEBUG
        log.debug("internal error", exc_info=True)
        sys.stderr.write(f"error: internal error {type(exc).__name__}: {str(exc)[:300]} "
                         "(rerun with STUDIO_LOG=DEBUG for details)\n")
        return 1
    if isinstance(result, dict):
        result.setdefault("seconds", round(time.time() - started, 2))
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0
