"""Start Tailor Studio: `python launch.py [--host 127.0.0.1] [--port 7860] [--workspace DIR] [--auth USER:PASS]`."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("launch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Tailor Studio web UI")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--workspace", default="workspace", help="folder for every output")
    parser.add_argument("--auth", default=None, help="USER:PASS required to open the studio")
    parser.add_argument("--model", default="default",
                        help="model to load at start ('default', hub id, folder, .gguf; 'none' to skip)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if present)")
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link")
    parser.add_argument("--memory-limit-mib", type=int, default=None,
                        help="refuse loads beyond this much model memory (an OOM guard)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the warnings and the server settings as JSON, then exit without "
                             "loading a model or serving")
    return parser.parse_args(argv)


def exposure_warning(host: str, auth) -> str | None:
    """A warning when the studio is reachable beyond this machine without a password."""
    if host in ("127.0.0.1", "localhost", "::1") or auth is not None:
        return None
    return (f"Binding {host} without --auth: anyone who can reach this machine can use the studio "
            "and its models; add --auth USER:PASS.")


def launch_settings(args, workspace, auth) -> dict:
    """Keyword arguments for `Blocks.launch`: Gradio may serve files from the workspace alone."""
    return {"server_name": args.host, "server_port": args.port, "auth": auth, "share": args.share,
            "allowed_paths": [str(workspace)], "show_error": True}


def main(argv=None) -> int:
    from studio.heap import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            sys.stderr.write("error: --auth must be USER:PASS\n")
            return 2
        auth = (user, password)
    warning = exposure_warning(args.host, auth)
    if warning:
        log.warning(warning)

    from studio.errors import StudioError
    from studio.session import Session

    try:
        limit = args.memory_limit_mib << 20 if args.memory_limit_mib else None
        session = Session(args.workspace, device=args.device, memory_limit_bytes=limit)
        settings = launch_settings(args, session.workspace, auth)
        if args.dry_run:
            import json

            print(json.dumps({**settings, "auth": None if auth is None else "***"}))
            return 0
        if args.model != "none":
            log.info("Loading %s ...", args.model)
            session.load(args.model, progress=lambda f, m="": log.info("[%3.0f%%] %s", f * 100, m))
    except StudioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    from components.app import build_app  # gradio: imported only when serving

    demo = build_app(session)
    demo.queue(default_concurrency_limit=4)
    demo.launch(**settings)
    return 0


def spawn(workspace, *extra: str, timeout: float = 300.0):
    """Start the studio in a subprocess on a free loopback port; (process, url, log path) once it
    answers HTTP. Tests and benchmarks share this one launcher."""
    import os
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workspace = Path(workspace)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    log_path = workspace.parent / f"studio-{port}.log"
    root = Path(__file__).resolve().parent
    proc = subprocess.Popen([sys.executable, str(root / "launch.py"), "--port", str(port),
                             "--workspace", str(workspace), *extra],
                            cwd=root, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"studio exited early: {log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, log_path
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # started with --auth: up, and refusing strangers
                return proc, url, log_path
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"studio did not answer in {timeout}s: {log_path.read_text()[-2000:]}")


if __name__ == "__main__":
    raise SystemExit(main())
