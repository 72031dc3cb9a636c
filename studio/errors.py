"""Typed errors: every message is one sentence that says what went wrong and what to do."""


class StudioError(Exception):
    """An error the user can act on; the UI and CLI show its message alone, never a traceback."""


class ModelLoadError(StudioError):
    pass


class UnsupportedArchitectureError(ModelLoadError):
    pass


class DataSourceError(StudioError):
    pass


class PruningError(StudioError):
    pass


class TrainingError(StudioError):
    pass


class ExportError(StudioError):
    pass


class JobError(StudioError):
    pass


class RecipeError(StudioError):
    pass
