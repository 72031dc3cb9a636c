"""Arguments and helpers shared by commands."""
from __future__ import annotations

import os

from studio.session import Session


def add_model_arguments(parser, flag: str = "--model", default: str = "default") -> None:
    parser.add_argument(flag, default=default,
                        help="default (embedded SmolLM2-135M-Instruct), hub id, folder or .gguf")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: by device)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the checkpoint (off by default)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickle (.bin) weights (off by default)")
    parser.add_argument("--workspace", default="workspace", help="folder for every output")


def open_session(args, progress, role: str = "base", spec: str | None = None) -> Session:
    session = Session(args.workspace, device=args.device)
    session.load(spec or args.model, role=role, dtype=args.dtype,
                 trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                 progress=progress)
    return session


def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def process_device(device: str | None) -> str | None:
    """Under torchrun without --device, each process takes its own GPU (cuda:LOCAL_RANK), or the
    CPU when there is none; otherwise the device as given."""
    if device is None and "LOCAL_RANK" in os.environ:
        import torch
        return f"cuda:{os.environ['LOCAL_RANK']}" if torch.cuda.is_available() else "cpu"
    return device
