"""The search phase's Tuner pieces: its scheduler, its searcher, its param_space, cell by cell.

A study compares configurations only within a cell (`compare_within`), so the
scheduler and the searcher keep one Ray Tune instance per cell:

- ``rungs.DeterministicHalving`` (``scheduler.mode: deterministic``, the default):
  synchronous successive halving per cell, cut by the selection rule in a fixed trial
  order, so the trials it stops do not depend on arrival order (rest/study/rungs.py).
  ``per_cell.TrialGroups`` says who competes with whom and in which order.
- ``per_cell.PerCellASHA`` (``scheduler.mode: async``): one Ray ``AsyncHyperBandScheduler`` per cell.
- ``per_cell.PerCellSearch``: one Ray searcher (``OptunaSearch`` or ``HyperOptSearch``) per
  cell, each with its own budget of ``num_samples`` trials over the space outside the
  cells. With ASHA this is ASHA + TPE in every cell, the BOHB recipe.
- ``FixedConfigs``: a given list of whole configs (the confirm phase, a methods study's grids).

Grid and random studies use Ray Tune's own variant generator (grid values
enumerated, sampled ones drawn ``num_samples`` times per grid point), which is
already per cell when the cells are grid keys.

Imports Ray: the command line imports the study's Ray modules inside its handlers only.
"""

from __future__ import annotations

import logging
import math
import pickle
from typing import Any

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator, Searcher, SearchGenerator

from rest.study.contract import METRIC, MODE, SEARCHER_METRIC, TIME_ATTR
from rest.study.per_cell import PerCellASHA, PerCellSearch, TrialGroups
from rest.study.rungs import BOOK_FILE, ActiveTrialLimit, DeterministicHalving
from rest.study.space import SpaceError, StudySpec, method_configs

log = logging.getLogger(__name__)


def deterministic(spec: StudySpec) -> bool:
    return spec.scheduler.type == "asha" and spec.scheduler.mode == "deterministic"


def rung_epochs(spec: StudySpec) -> tuple[int, ...]:
    """Epochs at which deterministic halving cuts (none for async ASHA or no scheduler).

    ``ceil(grace_period x reduction_factor^k)`` below the last epoch: at the last one
    every trial ends anyway. The trainable checkpoints at each of them.
    """
    sched = spec.scheduler
    if not deterministic(spec):
        return ()
    epochs, k = [], 0
    while math.ceil(sched.grace_period * sched.reduction_factor**k - 1e-9) < spec.max_epochs:
        epochs.append(math.ceil(sched.grace_period * sched.reduction_factor**k - 1e-9))
        k += 1
    return tuple(sorted(set(epochs)))


def make_scheduler(spec: StudySpec, study=None, max_active: int | None = None):
    """The search phase's scheduler; deterministic halving keeps its cuts in the `study` directory (a Location)."""
    if spec.scheduler.type == "none":
        return FIFOScheduler()
    if deterministic(spec):
        return DeterministicHalving(
            TrialGroups(spec),
            list(rung_epochs(spec)),
            spec.scheduler.reduction_factor,
            spec.train.selection,
            METRIC,
            study.join(BOOK_FILE) if study is not None else None,
            max_active,
        )
    return PerCellASHA(
        spec.compare_within, time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=spec.max_epochs,
        grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor,
    )  # fmt: skip


def search_phase(spec: StudySpec, study=None, max_concurrent: int | None = None) -> tuple:
    """(scheduler, search_alg, num_samples, max_concurrent_trials) of the search phase's Tuner.

    Deterministic halving pauses trials at rungs, and Ray's concurrency limits count a
    paused trial as live; there `--max-concurrent` caps running trials through
    ``rungs.ActiveTrialLimit`` instead, and Tune gets no limit of its own.
    """
    scheduler = make_scheduler(spec, study, max_concurrent)
    search_alg, num_samples = make_search_alg(spec)
    if not rung_epochs(spec):
        return scheduler, search_alg, num_samples, max_concurrent
    if max_concurrent is None:
        return scheduler, search_alg, num_samples, None
    inner = search_alg or BasicVariantGenerator()
    inner = SearchGenerator(inner) if not isinstance(inner, (BasicVariantGenerator, SearchGenerator)) else inner
    return scheduler, ActiveTrialLimit(inner, max_concurrent, scheduler), num_samples, None


class FixedConfigs(Searcher):
    """Proposes a given list of whole configs, in order, each once; trial configs stay flat.

    For the confirm phase and the expanded grids of a methods study. (Ray's grid_search
    over dicts nests each config under a key, and BasicVariantGenerator's
    points_to_evaluate needs every key of every point in the param_space.)
    """

    def __init__(self, configs: list[dict]):
        super().__init__(metric=SEARCHER_METRIC, mode=MODE)
        self.configs = [dict(c) for c in configs]
        self.issued = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.issued >= len(self.configs):
            return Searcher.FINISHED
        self.issued += 1
        return dict(self.configs[self.issued - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.issued, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.issued = pickle.load(f)


def fixed_configs(configs: list[dict]):
    """(search_alg, num_samples) that run exactly `configs`, flat, in order."""
    return FixedConfigs(configs), len(configs)


def make_search_alg(spec: StudySpec):
    """(search_alg, num_samples) for the search phase's TuneConfig."""
    alg = spec.search_alg
    if spec.methods:  # every method's own grid, expanded into whole configs
        configs = method_configs(spec, spec.max_epochs)
        if deterministic(spec):  # deterministic halving orders a method's trials by their place in its grid
            configs = [{**c, "extra": {**c["extra"], "position": i}} for i, c in enumerate(configs)]
        return fixed_configs(configs)
    if not alg.model_based:
        if alg.type == "grid" and alg.max_concurrent is None:
            return None, spec.num_samples
        return BasicVariantGenerator(max_concurrent=alg.max_concurrent or 0, random_state=alg.seed), spec.num_samples
    cells = spec.cells()
    space, lookups = {}, {}
    for key, dist in spec.search.items():
        ((name, args),) = dist.items()
        if key in spec.compare_within:
            continue
        if name == "lookup":
            lookups[key] = (args["key"], {float(k): v for k, v in args["table"].items()})
        else:
            space[key] = to_tune(dist)
    searcher = PerCellSearch(
        cells,
        space,
        lookups,
        spec.num_samples,
        alg.type,
        alg.seed,
        alg.n_initial,
        alg.max_concurrent or 1,
        metric=SEARCHER_METRIC,
        mode=MODE,
        batch=deterministic(spec),
    )
    return searcher, spec.num_samples * len(cells)


def search_param_space(spec: StudySpec) -> dict:
    """The search phase's param_space: fixed settings, plus Tune distributions unless a searcher proposes them."""
    fixed = spec.train.replace(epochs=spec.max_epochs).to_dict()
    if spec.search_alg.model_based or spec.methods:  # the searcher proposes every searched value
        return fixed
    return {**fixed, **{k: to_tune(d) for k, d in spec.search.items()}}


# ------------------------------------------------------ Ray Tune distributions


def to_tune(dist: dict[str, Any]):
    """The Ray Tune search object of one validated distribution."""
    ((name, args),) = dist.items()
    if name == "grid":
        return tune.grid_search(list(args))
    if name == "lookup":
        return tune.sample_from(_Lookup(args["key"], args["table"]))
    if name == "choice":
        return tune.choice(list(args))
    return getattr(tune, name)(*args)


class _Lookup:
    """Picklable `sample_from` callable: the value of `table` at the trial's `key`."""

    def __init__(self, key: str, table: dict):
        self.key = key
        self.table = {float(k): v for k, v in table.items()}

    def __call__(self, spec) -> Any:
        value = spec.config[self.key]
        if float(value) not in self.table:
            raise SpaceError(f"lookup on {self.key}: no entry for {value}; add it to the table")
        return self.table[float(value)]
