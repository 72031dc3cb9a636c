"""Named hook points over any supported model, found through its adapter (TransformerLens style).

Names and shapes (B batch, T tokens, D hidden, I GLU width, H query heads, Dh head_dim):
  layers.{i}.resid_pre      [B, T, D]      input of decoder layer i
  layers.{i}.resid_post     [B, T, D]      output of decoder layer i
  layers.{i}.attn.head_out  [B, T, H, Dh]  per-head attention output, before o_proj
  layers.{i}.attn.out       [B, T, D]      attention output (o_proj)
  layers.{i}.mlp.act        [B, T, I]      GLU activation act(gate(x))·up(x), input of down_proj
  layers.{i}.mlp.out        [B, T, D]      MLP output (down_proj)

Hooks are always removed in `finally`, and every capture is read-only unless it is a mask.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable

import torch
from torch import nn

from studio.models.adapters import ArchitectureAdapter

HookFn = Callable[[str, torch.Tensor], None]
KINDS = ("resid_pre", "resid_post", "attn.head_out", "attn.out", "mlp.act", "mlp.out")


def hook_names(adapter: ArchitectureAdapter, config, kinds: Iterable[str] = KINDS) -> list[str]:
    return [f"layers.{i}.{k}" for i in range(adapter.num_layers(config)) for k in kinds]


def _first_tensor(args, kwargs, key: str = "hidden_states") -> torch.Tensor:
    return args[0] if args else kwargs[key]


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _split_name(name: str) -> tuple[int, str]:
    _, index, kind = name.split(".", 2)
    return int(index), kind


def _attach(model: nn.Module, adapter: ArchitectureAdapter, name: str, fn: HookFn):
    """Register the forward (pre-)hook that feeds `fn(name, tensor)` for one hook point."""
    index, kind = _split_name(name)
    layer = adapter.layers(model)[index]
    _, _, _, o_proj = adapter.qkvo(layer)
    down = adapter.glu(layer)[2]
    if kind == "resid_pre":
        return layer.register_forward_pre_hook(
            lambda m, a, kw: fn(name, _first_tensor(a, kw)), with_kwargs=True)
    if kind == "resid_post":
        return layer.register_forward_hook(lambda m, a, out: fn(name, _output_tensor(out)))
    if kind == "attn.head_out":
        head_dim = adapter.head_layout(model.config).head_dim
        return o_proj.register_forward_pre_hook(
            lambda m, a: fn(name, a[0].unflatten(-1, (-1, head_dim))))
    if kind == "attn.out":
        return o_proj.register_forward_hook(lambda m, a, out: fn(name, out))
    if kind == "mlp.act":
        return down.register_forward_pre_hook(lambda m, a: fn(name, a[0]))
    if kind == "mlp.out":
        return down.register_forward_hook(lambda m, a, out: fn(name, out))
    raise ValueError(f"unknown hook point {name!r}; kinds are {', '.join(KINDS)}")


@contextlib.contextmanager
def hooks(model: nn.Module, adapter: ArchitectureAdapter, names: Iterable[str], fn: HookFn):
    """Call fn(name, tensor) at each named point while the context is open."""
    handles = []
    try:
        for name in names:
            handles.append(_attach(model, adapter, name, fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def run_with_cache(model: nn.Module, adapter: ArchitectureAdapter, input_ids: torch.Tensor,
                   names: Iterable[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {name: detached tensor on CPU}) for one forward pass."""
    cache: dict[str, torch.Tensor] = {}

    def keep(name: str, tensor: torch.Tensor) -> None:
        cache[name] = tensor.detach().float().cpu()

    device = next(model.parameters()).device
    with hooks(model, adapter, names, keep):
        logits = model(input_ids=input_ids.to(device), use_cache=False).logits
    return logits, cache


class _SkippedLayer(nn.Module):
    """Stands in for a removed decoder layer during preview: passes the residual stream through
    in the previewing thread; any other thread (a generation meanwhile) gets the real layer."""

    def __init__(self, original: nn.Module, owner: int):
        super().__init__()
        self.original = [original]  # a list, so it is not registered as a submodule
        self.owner = owner
        self.attention_type = getattr(original, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        if threading.get_ident() != self.owner:
            return self.original[0](hidden_states, *args, **kwargs)
        return hidden_states


@contextlib.contextmanager
def pruning_masks(model: nn.Module, adapter: ArchitectureAdapter,
                  neuron_keep: dict[int, torch.Tensor] | None = None,
                  head_keep: dict[int, torch.Tensor] | None = None,
                  skip_layers: Iterable[int] = ()):
    """Preview a pruning plan without changing weights: zero removed neurons' activations and
    removed heads' outputs (exactly what removal does) and pass skipped layers through."""
    neuron_keep, head_keep = neuron_keep or {}, head_keep or {}
    layers = adapter.layers(model)
    head_dim = adapter.head_layout(model.config).head_dim
    handles, swapped = [], {}
    owner = threading.get_ident()  # masks apply to this thread's forwards only

    def neuron_mask(mask):
        def apply(m, a):
            if threading.get_ident() != owner:
                return None
            return (a[0] * mask.to(a[0].dtype),)
        return apply

    def head_mask(mask):
        def apply(m, a):
            if threading.get_ident() != owner:
                return None
            x = a[0].unflatten(-1, (-1, head_dim)) * mask.to(a[0].dtype)[:, None]
            return (x.flatten(-2),)
        return apply

    try:
        for i, keep in neuron_keep.items():
            down = adapter.glu(layers[i])[2]
            handles.append(down.register_forward_pre_hook(neuron_mask(keep.to(down.weight.device))))
        for i, keep in head_keep.items():
            o_proj = adapter.qkvo(layers[i])[3]
            handles.append(o_proj.register_forward_pre_hook(head_mask(keep.to(o_proj.weight.device))))
        for i in skip_layers:
            swapped[i] = layers[i]
            layers[i] = _SkippedLayer(layers[i], owner)
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for i, original in swapped.items():
            layers[i] = original
