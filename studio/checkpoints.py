"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

The transformers Trainer writes optimizer.pt, scheduler.pt, rng_state.pth, scaler.pt and
training_args.bin with torch.save, i.e. pickle: a workspace shared or downloaded from elsewhere
could then run code on resume. `SafeCheckpointMixin` overrides the Trainer's save/load hooks for
those files (transformers 5: `_save`, `_save_optimizer_and_scheduler`, `_save_scaler`,
`_save_rng_state` and their `_load_*` twins) so a checkpoint holds only the model's safetensors,
`<name>.safetensors` + `<name>.json` state files, and trainer_state.json. Values round-trip
exactly (floats through JSON repr, tensors bit for bit), so a resume continues the same schedule.
Both trainers use it: `DistillTrainer` (distillation) and `SafeTrainer` (LoRA).
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_pt_utils import set_rng_state_for_device
from transformers.training_args import ParallelMode

from studio.errors import TrainingError

log = logging.getLogger(__name__)

ARGS_FILE = "training_args.json"
PICKLE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "training_args.bin")


# -- state <-> (JSON, tensors) ------------------------------------------------------------------
def _encode(value, tensors: dict, path: str):
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu").contiguous()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}.key{i}"), _encode(v, tensors, f"{path}.{k}")]
                              for i, (k, v) in enumerate(value.items())]}  # int keys stay ints
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path}: a {type(value).__name__} cannot be stored without pickle")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_state(state, folder, name: str) -> None:
    """Write `state` (nested dicts/lists/tuples of tensors, arrays and plain values) as
    name.safetensors (its tensors, when there are any) + name.json (the rest, written last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    plain = _encode(state, tensors, name)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(plain))


def load_state(folder, name: str, device="cpu"):
    """The state written by `save_state`, or None when the folder has none under that name."""
    folder = Path(folder)
    meta = folder / f"{name}.json"
    if not meta.is_file():
        return None
    weights = folder / f"{name}.safetensors"
    tensors = load_file(str(weights), device=str(device)) if weights.is_file() else {}
    return _decode(json.loads(meta.read_text()), tensors)


# -- the Trainer hooks ----------------------------------------------------------------------------
class SafeCheckpointMixin:
    """Put before `Trainer` in the bases: checkpoints are safetensors + JSON, never pickle."""

    def _native_format(self) -> bool:
        """DeepSpeed and FSDP keep their own checkpoint formats (the studio uses neither)."""
        return self.is_deepspeed_enabled or self.is_fsdp_enabled

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer._save (weights via save_pretrained = safetensors, the tokenizer) with the
        training arguments as JSON instead of the pickled training_args.bin."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        model.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        Path(output_dir, ARGS_FILE).write_text(self.args.to_json_string())

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self._native_format():
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            save_state(self.optimizer.state_dict(), output_dir, "optimizer")
            save_state(self.lr_scheduler.state_dict(), output_dir, "scheduler")

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        if self._native_format():
            return super()._load_optimizer_and_scheduler(checkpoint)
        device = self.args.device if self.args.world_size > 1 and self.args.device.type != "cpu" else "cpu"
        optimizer = load_state(checkpoint, "optimizer", device)
        scheduler = load_state(checkpoint, "scheduler")
        if optimizer is None or scheduler is None:
            _refuse_pickle(checkpoint)
            return  # like the Trainer: no saved state, start it afresh
        self.optimizer.load_state_dict(optimizer)
        self.lr_scheduler.load_state_dict(scheduler)

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            save_state(scaler.state_dict(), output_dir, "scaler")

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        state = load_state(checkpoint, "scaler") if checkpoint and scaler is not None else None
        if state is not None:
            scaler.load_state_dict(state)

    def _rng_name(self) -> str:
        return "rng_state" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}"

    def _save_rng_state(self, output_dir: str) -> None:
        states = {"python": random.getstate(), "numpy": np.random.get_state(),
                  "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            distributed = self.args.parallel_mode == ParallelMode.DISTRIBUTED
            states["cuda"] = torch.cuda.random.get_rng_state_all() if distributed \
                else torch.cuda.random.get_rng_state()
        save_state(states, output_dir, self._rng_name())

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        states = load_state(checkpoint, self._rng_name())
        if states is None:
            log.info("No RNG state in %s; the resumed run will not draw the same random numbers.",
                     checkpoint)
            return
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.random.set_rng_state(states["cpu"])
        if torch.cuda.is_available() and "cuda" in states:
            set_rng_state_for_device("CUDA", torch.cuda, states,
                                     self.args.parallel_mode == ParallelMode.DISTRIBUTED)


def _refuse_pickle(checkpoint) -> None:
    found = [n for n in PICKLE_FILES if (Path(checkpoint) / n).is_file()]
    if found:
        raise TrainingError(f"Checkpoint {checkpoint} holds pickle training state ({', '.join(found)}), "
                            "which the studio does not load; start a new run instead of resuming.")


class SafeTrainer(SafeCheckpointMixin, Trainer):
    """The transformers Trainer with pickle-free checkpoints (used for LoRA)."""
