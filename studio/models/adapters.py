"""Architecture adapters: the one place that knows where a model keeps its parts.

Every other module asks an adapter for layers, GLU projections and attention projections,
so supporting a new decoder family is one registry entry, never a scattered name check.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from studio.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class HeadLayout:
    """Attention shape of one layer: query heads share KV heads in groups (GQA)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Module paths of a decoder-only family with a GLU MLP and separate q/k/v/o projections."""

    family: str
    model_types: tuple[str, ...]
    layers_path: str = "model.layers"
    final_norm_path: str = "model.norm"
    mlp_name: str = "mlp"
    gate_name: str = "gate_proj"
    up_name: str = "up_proj"
    down_name: str = "down_proj"
    attn_name: str = "self_attn"
    q_name: str = "q_proj"
    k_name: str = "k_proj"
    v_name: str = "v_proj"
    o_name: str = "o_proj"

    # -- where things live -------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def backbone(self, model: nn.Module) -> nn.Module:
        """The decoder stack without the LM head (embeddings, layers, final norm)."""
        return model.get_submodule(self.layers_path.rpartition(".")[0])

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.final_norm_path)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def glu(self, layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """(gate, up, down): down's input is act(gate(x)) * up(x), one column per neuron."""
        mlp = self.mlp(layer)
        return getattr(mlp, self.gate_name), getattr(mlp, self.up_name), getattr(mlp, self.down_name)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def qkvo(self, layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        attn = self.attention(layer)
        return tuple(getattr(attn, n) for n in (self.q_name, self.k_name, self.v_name, self.o_name))

    def module_names(self, kind: str) -> list[str]:
        """Leaf names for LoRA targets: kind is 'attention' or 'mlp'."""
        if kind == "attention":
            return [self.q_name, self.k_name, self.v_name, self.o_name]
        if kind == "mlp":
            return [self.gate_name, self.up_name, self.down_name]
        raise ValueError(f"unknown module kind {kind!r}; use 'attention' or 'mlp'")

    # -- shapes (the config is the only source of truth) ----------------------------------
    def head_layout(self, config) -> HeadLayout:
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return HeadLayout(heads, kv, head_dim)

    def num_layers(self, config) -> int:
        return config.num_hidden_layers

    def intermediate_size(self, config) -> int:
        return config.intermediate_size

    # -- keeping config and modules consistent after surgery -----------------------------
    def set_intermediate_size(self, config, width: int) -> None:
        config.intermediate_size = width

    def set_head_layout(self, model: nn.Module, layout: HeadLayout) -> None:
        """Write the new head counts into the config and every attention module."""
        config = model.config
        config.num_attention_heads = layout.num_heads
        config.num_key_value_heads = layout.num_kv_heads
        config.head_dim = layout.head_dim  # explicit, or hidden/heads would change it
        for layer in self.layers(model):
            attn = self.attention(layer)
            attn.num_key_value_groups = layout.group_size
            for name in ("num_heads", "num_attention_heads"):
                if hasattr(attn, name):
                    setattr(attn, name, layout.num_heads)
            for name in ("num_key_value_heads", "num_kv_heads"):
                if hasattr(attn, name):
                    setattr(attn, name, layout.num_kv_heads)

    def keep_layers(self, model: nn.Module, keep: list[int]) -> None:
        """Drop every layer not in keep; renumber layer_idx (KV cache) and per-layer config lists."""
        layers = self.layers(model)
        kept = nn.ModuleList([layers[i] for i in keep])
        parent_path, _, attr = self.layers_path.rpartition(".")
        setattr(model.get_submodule(parent_path), attr, kept)
        for new_idx, layer in enumerate(kept):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_idx
        config = model.config
        config.num_hidden_layers = len(keep)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]
        if getattr(config, "max_window_layers", None) is not None:
            config.max_window_layers = min(config.max_window_layers, len(keep))


_FAMILIES = [
    ArchitectureAdapter("llama", ("llama",)),
    ArchitectureAdapter("mistral", ("mistral",)),
    ArchitectureAdapter("qwen2", ("qwen2",)),
    ArchitectureAdapter("qwen3", ("qwen3",)),
    ArchitectureAdapter("gemma", ("gemma",)),
    ArchitectureAdapter("gemma2", ("gemma2",)),
    ArchitectureAdapter("gemma3", ("gemma3_text",)),
]
ADAPTERS: dict[str, ArchitectureAdapter] = {mt: a for a in _FAMILIES for mt in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(model_or_config) -> ArchitectureAdapter:
    """The adapter for a model or config, or an error naming the architecture and what works."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None) or "unknown"
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    arch = ", ".join(getattr(config, "architectures", None) or []) or model_type
    hint = ""
    if model_type == "gemma3":
        hint = " (for Gemma 3, load the text-only checkpoint with model_type gemma3_text)"
    raise UnsupportedArchitectureError(
        f"Architecture '{arch}' (model_type '{model_type}') is not supported; load a decoder-only "
        f"model with a GLU MLP and separate q/k/v/o projections, one of "
        f"{', '.join(supported_model_types())}{hint}."
    )
