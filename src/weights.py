"""Variables keyed by path, and loading arrays into them: what checkpoints and generator files share.

``<network>/<layer>/<variable>``, e.g. ``generator/dense/kernel``: ``<layer>`` is the
layer's name as a fresh process names it (Keras numbers layers process-wide, ``dense_7``
after six other Dense layers; here the number is the layer's rank among the network's
layers of that name), so keys do not depend on what else the process built.
:mod:`src.checkpoint` adds the optimizer and EMA keys of the full training state;
:mod:`src.networks` reads generator snapshots with these alone.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from src.errors import UserError

_POSITIONAL = re.compile(r"^(g|d|ema|gopt|dopt)\.\d+$")  # the format before keys by path
_COUNTER = re.compile(r"_\d+$")                          # the number Keras appends to a layer name


def network_variables(model, name: str) -> dict[str, Any]:
    """``name/<layer>/<variable>`` -> variable, for every variable of the Keras ``model``."""
    keyed, seen = {}, {}
    for layer in model.layers:
        base = _COUNTER.sub("", layer.name)
        rank = seen.get(base, 0)
        seen[base] = rank + 1
        layer_key = base if rank == 0 else f"{base}_{rank}"
        if hasattr(layer, "layers"):  # a network inside the network (a frozen pretrained one): its own keys
            for key, var in network_variables(layer, f"{name}/{layer_key}").items():
                add_key(keyed, key, var)
            continue
        for var in layer.variables:
            add_key(keyed, f"{name}/{layer_key}/{var.name}", var)
    if {id(v) for v in keyed.values()} != {id(v) for v in model.variables}:
        raise RuntimeError(f"checkpoint keys: the layers of '{name}' do not hold exactly its variables")
    return keyed


def add_key(keyed: dict, key: str, var) -> None:
    if key in keyed:
        raise RuntimeError(f"checkpoint keys: two variables have the key '{key}'")
    keyed[key] = var


def assign(variables: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str | Path,
           what: str = "checkpoint") -> None:
    """Assign ``arrays[key]`` to each ``variables[key]``, after checking every key and shape.

    A UserError naming ``source`` (one line) on a checkpoint of the earlier positional
    format, on the first key the model needs that the file lacks (in the model's order), on
    the first key the file holds that the model lacks, and on a shape mismatch. Nothing is
    assigned unless everything matches.
    """
    source = Path(source)
    if any(_POSITIONAL.match(key) for key in arrays):
        raise UserError(f"{source}: this {what} predates arrays keyed by variable path (its arrays are "
                        f"numbered by position, like 'g.000'); delete {source.parent} to start fresh")
    for key in variables:
        if key not in arrays:
            raise UserError(f"{source}: {what} has no array '{key}', which the model built from params.yaml "
                            "needs (was it made with other model params?)")
    for key in arrays:
        if key not in variables:
            raise UserError(f"{source}: {what} holds array '{key}', which the model built from params.yaml "
                            "does not have (was it made with other model params?)")
    for key, var in variables.items():
        if tuple(var.shape) != arrays[key].shape:
            raise UserError(f"{source}: array '{key}' has shape {arrays[key].shape} but the model built from "
                            f"params.yaml expects {tuple(var.shape)} (was it made with other model params?)")
    for key, var in variables.items():
        var.assign(arrays[key])
