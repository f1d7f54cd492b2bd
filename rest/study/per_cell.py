"""One Ray Tune instance per cell: who competes with whom, the per-cell ASHA, the per-cell searcher.

A study compares configurations only within a cell (``compare_within``, e.g. one
dataset at one conflict ratio): a 5 % cell scores higher than a 1 % one whatever
the config, so a global scheduler or searcher would favour the easy cell.

- ``trial_cell`` and ``TrialGroups``: a trial's comparison group, and for deterministic
  halving (rest/study/rungs.py) the group's size and the trial's place in the search order.
- ``PerCellASHA`` (``scheduler.mode: async``): one Ray ``AsyncHyperBandScheduler`` per cell.
- ``PerCellSearch``: one Ray searcher (``OptunaSearch`` or ``HyperOptSearch``, each
  under a ``ConcurrencyLimiter``) per cell, each with its own budget of trials.

Imports Ray: the command line imports the study's Ray modules inside its handlers only.
Tune pickles these objects (by class path) into the experiment's snapshot for a resume.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from rest.study import tune_ext
from rest.study.contract import flat_config
from rest.study.space import StudySpec, method_configs


def trial_cell(config: dict, cell_keys: list[str]) -> tuple:
    """The comparison group of a trial: its cell, and its method in a methods study
    (each method's own search competes only with itself)."""
    flat = flat_config(config)
    method = (flat.get("extra") or {}).get("method")
    return tuple(flat[k] for k in cell_keys) + ((method,) if method is not None else ())


class TrialGroups:
    """For deterministic halving: each trial's group, the group's size, and the trial's place in the search order.

    A group is a cell (``trial_cell``); with optuna/hyperopt it is one batch of
    ``search_alg.max_concurrent`` consecutive trials of a cell (its searcher proposes
    the next batch once this one ended). The order is a function of the config alone:
    the position a model-based searcher or a methods study wrote into ``extra.position``,
    else, key by key in the study file's order, the index of the value in its grid (or
    choice) list, or the sampled value itself.
    """

    def __init__(self, spec: StudySpec):
        self.cell_keys = list(spec.compare_within)
        alg = spec.search_alg
        self.batch = (alg.max_concurrent or 1) if alg.model_based else None
        self.keys = [
            (k, list(args) if name in ("grid", "choice") else None)
            for k, d in spec.search.items()
            for name, args in d.items()
            if k not in self.cell_keys and name != "lookup"
        ]
        if spec.methods:
            self.sizes = dict(Counter(trial_cell(c, self.cell_keys) for c in method_configs(spec)))
        else:
            per_cell = spec.num_samples if alg.model_based else spec.grid_size() // len(spec.cells())
            self.sizes = {trial_cell(c, self.cell_keys): per_cell for c in spec.cells()}

    def group(self, config: dict) -> tuple:
        cell = trial_cell(config, self.cell_keys)
        if self.batch is None:
            return cell
        position = _position(config)
        assert position is not None, "a model-based search numbers its trials in extra.position"
        return cell + (position // self.batch,)

    def size(self, group) -> int:
        group = tuple(group)
        if self.batch is None:
            return self.sizes.get(group, 0)
        *cell, batch = group
        return max(0, min(self.batch, self.sizes.get(tuple(cell), 0) - batch * self.batch))

    def order(self, config: dict) -> list:
        if _position(config) is not None:
            return [_position(config)]
        flat = flat_config(config)
        return [values.index(flat[k]) if values and flat[k] in values else flat[k] for k, values in self.keys]


def _position(config: dict) -> int | None:
    return (flat_config(config).get("extra") or {}).get("position")


# ------------------------------------------------------------------ ASHA


class PerCellASHA(FIFOScheduler):
    """One Ray ASHA scheduler per cell; every scheduler callback goes to the trial's cell."""

    def __init__(self, cell_keys: list[str], **asha: Any):
        super().__init__()
        self.cell_keys = list(cell_keys)
        self.asha = asha
        self._metric = asha["metric"]
        self.cells: dict[tuple, AsyncHyperBandScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return (metric in (None, self.asha["metric"])) and (mode in (None, self.asha["mode"]))

    def cell(self, trial) -> AsyncHyperBandScheduler:
        key = trial_cell(trial.config, self.cell_keys)
        if key not in self.cells:
            self.cells[key] = AsyncHyperBandScheduler(**self.asha)
        return self.cells[key]

    def on_trial_add(self, tune_controller, trial):
        self.cell(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        if not tune_ext.asha_knows(self.cell(trial), trial):  # a trial restored after a driver crash
            self.cell(trial).on_trial_add(tune_controller, trial)
        return self.cell(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if tune_ext.asha_knows(self.cell(trial), trial):
            self.cell(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        tune_ext.asha_forget(self.cell(trial), trial)

    def debug_string(self) -> str:
        stopped = sum(tune_ext.asha_stopped(s) for s in self.cells.values())
        return f"per-cell ASHA over {self.cell_keys}: {len(self.cells)} cells, {stopped} trials stopped early"


# -------------------------------------------------------------- searchers


def _optuna(space: dict, metric: str, mode: str, seed: int | None, n_initial: int):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_initial)
    return OptunaSearch(OptunaSearch.convert_search_space(space), metric=metric, mode=mode, sampler=sampler)


def _hyperopt(space: dict, metric: str, mode: str, seed: int | None, n_initial: int):
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(
        HyperOptSearch.convert_search_space(space),
        metric=metric,
        mode=mode,
        n_initial_points=n_initial,
        random_state_seed=seed,
    )


# search_alg.type -> factory(space, metric, mode, seed, n_initial) of one cell's Ray searcher
MODEL_SEARCHERS = {"optuna": _optuna, "hyperopt": _hyperopt}


class PerCellSearch(Searcher):
    """One model-based Ray searcher per cell, each proposing exactly `per_cell` trials.

    Tune asks for trials one at a time; cells are offered the request in turn
    (round robin), so cells progress together and a cell at its concurrency limit
    does not block the others. Results go to the searcher of the trial's cell.

    With `batch` (deterministic halving), each cell proposes batches of `max_concurrent`
    trials, numbered in ``extra.position``; its searcher learns from a batch, and
    proposes the next, once every trial of the batch ended (Ray's ConcurrencyLimiter
    with batch=True), so every proposal depends on the seed and earlier batches only.

    Saved and restored whole (every cell's searcher through its own save/restore,
    its ConcurrencyLimiter's live trials, the per-cell counts): Ray's ConcurrencyLimiter
    saves only the searcher it wraps, so after a driver crash it would forget its live
    trials and drop their results. Tune writes this state in the same snapshot as the trial list, so a
    resume neither loses nor repeats a proposal.
    """

    def __init__(
        self,
        cells: list[dict],
        space: dict,
        lookups: dict[str, tuple[str, dict]],
        per_cell: int,
        kind: str,
        seed: int | None,
        n_initial: int,
        max_concurrent: int,
        metric: str,
        mode: str,
        batch: bool = False,
    ):
        super().__init__(metric=metric, mode=mode)
        self.cells = [dict(c) for c in cells]
        self.lookups = lookups
        self.per_cell = per_cell
        self.searchers = [
            ConcurrencyLimiter(
                MODEL_SEARCHERS[kind](space, metric, mode, None if seed is None else seed + i, n_initial),
                max_concurrent=max_concurrent,
                batch=batch,
            )
            for i in range(len(cells))
        ]
        self.batch = batch
        self.issued = [0] * len(cells)
        self.trial_cell: dict[str, int] = {}
        self.last: dict[str, dict] = {}  # trial id -> its newest result the searcher learns from
        self.next_cell = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space, metric and mode were fixed at construction

    def suggest(self, trial_id: str):
        if all(n >= self.per_cell for n in self.issued):
            return Searcher.FINISHED
        for offset in range(len(self.cells)):
            i = (self.next_cell + offset) % len(self.cells)
            if self.issued[i] >= self.per_cell:
                continue
            proposal = self.searchers[i].suggest(trial_id)
            if proposal in (None, Searcher.FINISHED):
                continue
            config = {
                **self.cells[i],
                **proposal,
                **({"extra": {"position": self.issued[i]}} if self.batch else {}),
            }
            self.issued[i] += 1
            self.trial_cell[trial_id] = i
            self.next_cell = (i + 1) % len(self.cells)
            for key, (source, table) in self.lookups.items():
                config[key] = table[float(config[source])]
            return config
        return None  # every open cell is at its concurrency limit

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trial_cell:
            self.last[trial_id] = {k: result[k] for k in (self.metric, "training_iteration") if k in result}
            self.searchers[self.trial_cell[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # Tune passes no result for a trial stopped while paused at a rung: it counts with its newest one.
        result = result or (None if error else self.last.get(trial_id))
        if trial_id in self.trial_cell:
            self.searchers[self.trial_cell[trial_id]].on_trial_complete(trial_id, result=result, error=error)
        self.last.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        state = {k: getattr(self, k) for k in ("issued", "trial_cell", "next_cell", "last")}
        state["limiters"] = [limiter.get_state() for limiter in self.searchers]
        state["searchers"] = [_saved_bytes(limiter.searcher) for limiter in self.searchers]
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        for limiter, limits, inner in zip(self.searchers, state.pop("limiters"), state.pop("searchers")):
            limiter.set_state(limits)
            _restore_bytes(limiter.searcher, inner)
        self.__dict__.update(state)


def _saved_bytes(searcher) -> bytes:
    """A Ray searcher's own checkpoint (its `save` writes a file) as bytes."""
    with tempfile.TemporaryDirectory() as d:
        searcher.save(os.path.join(d, "state"))
        return Path(d, "state").read_bytes()


def _restore_bytes(searcher, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "state").write_bytes(data)
        searcher.restore(os.path.join(d, "state"))
