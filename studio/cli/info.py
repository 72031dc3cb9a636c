"""Load a model and print its summary."""
from studio.cli._common import add_model_arguments, open_session

NAME = "info"


def add_arguments(parser) -> None:
    add_model_arguments(parser)


def run(args, progress) -> dict:
    session = open_session(args, progress)
    return session.summary()
