"""Headless face of the studio: `python -m studio COMMAND ...` prints one JSON object on stdout."""
from studio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
