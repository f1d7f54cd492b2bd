"""The sparse model-file format, torch only: a state dict packed as kept values plus a bitmap, and back.

A model file (``MODEL_FORMAT``) holds a training run's best-epoch weights: unmasked tensors
as they are (``dense``), masked ones as the values of their kept weights in order plus a
bitmap of where they are (``sparse``), with the run's settings and best-so-far metrics.
``export-model`` writes one (``rest.deploy.model_file``), ``rest.load_model`` reads one.

A finished trial's compact checkpoint (``COMPACT_FORMAT``, written by ``rest.study.compact``)
holds the model file its trial would export, so export reads it back bit-exact.
"""

from __future__ import annotations

import numpy as np

MODEL_FORMAT = "rest-sparse-model-v1"
COMPACT_FORMAT = "rest-compact-checkpoint-v1"


def is_compact(state: dict) -> bool:
    """Whether a checkpoint's state is a finished trial's compact one (it cannot be trained on)."""
    return state.get("format") == COMPACT_FORMAT


def weights_epoch(state: dict) -> int:
    """The epoch whose weights ``sparse_model_state`` takes from a training (or compact) state."""
    if is_compact(state):
        return int(state["weights_epoch"])
    return int(state["best"]["best_epoch"]) if state.get("best_weights") else int(state["epoch"])


def pack(tensor, mask) -> dict:
    """A masked tensor as its shape, a bitmap of the mask (8 weights a byte) and the kept values in order."""
    import torch

    return {
        "shape": tuple(tensor.shape),
        "bitmap": torch.from_numpy(np.packbits(mask.flatten().numpy())),
        "values": tensor.flatten()[mask.flatten()].clone(),
    }


def unpack(entry: dict):
    """The full tensor of a packed entry: its kept values where the bitmap says, zeros elsewhere."""
    import torch

    numel = int(np.prod(entry["shape"]))
    mask = torch.from_numpy(np.unpackbits(entry["bitmap"].numpy())[:numel].astype(bool))
    full = torch.zeros(numel, dtype=entry["values"].dtype)
    full[mask] = entry["values"]
    return full.view(entry["shape"])


def sparse_model_state(state: dict) -> dict:
    """The model file of a training checkpoint: its best-epoch weights, masked ones packed (``pack``)."""
    if is_compact(state):
        return state["model_file"]  # made by this function when the trial was compacted
    weights = state.get("best_weights") or {"model": state["model"], "masks": state["sparse"]["masks"]}
    masks = weights["masks"]
    return {
        "format": MODEL_FORMAT,
        "settings": state["settings"],
        "epoch": state["best"].get("best_epoch"),
        "metrics": state["best"],
        "dense": {name: t for name, t in weights["model"].items() if masks.get(name) is None},
        "sparse": {name: pack(t, masks[name]) for name, t in weights["model"].items() if masks.get(name) is not None},
    }


def model_weights(saved: dict) -> dict:
    """The state dict of a model file: its dense tensors and its packed ones unpacked."""
    return dict(saved["dense"]) | {name: unpack(entry) for name, entry in saved["sparse"].items()}


def compact_state(state: dict) -> dict:
    """What a finished trial keeps of its training state: the model file ``export-model`` writes
    from it, the epoch its weights are from, its best-so-far metrics and its final record (what
    a resumed trial reports again). No optimizer state, no non-best weights."""
    history = state.get("history") or []
    return {
        "format": COMPACT_FORMAT,
        "settings": state["settings"],
        "epoch": int(state["epoch"]),
        "best": dict(state["best"]),
        "weights_epoch": weights_epoch(state),
        "final_record": history[-1] if history else None,
        "model_file": sparse_model_state(state),
    }
