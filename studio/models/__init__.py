from studio.models.adapters import ADAPTERS, ArchitectureAdapter, HeadLayout, adapter_for
from studio.models.loading import LoadedModel, load_model

__all__ = ["ADAPTERS", "ArchitectureAdapter", "HeadLayout", "LoadedModel", "adapter_for", "load_model"]
