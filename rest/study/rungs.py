"""Deterministic per-cell successive halving: ``scheduler: {type: asha, mode: deterministic}``.

The rule (also in docs/search_spaces.md and docs/fidelity.md):

1. **Groups.** The trials that compete form a group: every trial of a cell in grid, random
   and methods studies (a methods study's cell is cell x method); with optuna/hyperopt,
   consecutive batches of ``search_alg.max_concurrent`` trials in the cell's search order
   (``per_cell.TrialGroups``).
2. **Rungs** at epochs ``ceil(grace_period x reduction_factor^k)`` below the last epoch. A
   rung is cut only when the whole group is there: every trial of the group that passed
   the rung before has reported this rung's epoch (a trial that failed for good drops out).
3. **The cut.** The trials' records at the rung epoch, listed in the group's fixed order
   (each trial's position in the search order, taken from its config, never Ray's trial id
   or arrival), ranked by ``rest.selection`` (validation primary metric, then average
   accuracy, then loss; equal records keep the listed order). The top
   ``floor(n / reduction_factor)`` (at least one; Hyperband's rule, Li et al. 2018,
   Algorithm 1) continue, the others stop.

A cut is therefore a function of the group's results at its rung, and of nothing else:
not of which trial finished first, the concurrency, a slow node, a retry or a resume.

A trial that reaches a rung before its cut is paused with Ray's PAUSE: it gives its slot
back and, if it continues, starts again from the checkpoint it wrote at the rung epoch
(the trainable checkpoints at every rung epoch and, resumed there, reports that epoch
once more, so the cut is known before it trains on). ``choose_trial_to_run`` starts
pending trials first and then the promoted ones, so no slot idles while work is left.
Every cut is written to ``<study>/search_rungs.json`` before it is acted on; a resumed
driver replays the stored cuts and never takes one again (the book names trials by their
search position, so the cuts hold even for a phase that had to start afresh).

Why not Ray's own pieces: Ray's synchronous ``HyperBandScheduler`` has global brackets
(a strong cell would stop a weak cell's trials), fills them with trials in the order they
are added and breaks ties in that order, sizes rungs from ``max_t`` rather than from the
cell, and keeps its state only in the driver's memory (Ray does not snapshot schedulers),
so a resumed study would cut again from scratch. Ray's ``max_concurrent_trials`` and
``ConcurrencyLimiter`` count a paused trial as live, so under a limit a rung would never
fill (Ray's BOHB works around the same problem): ``ActiveTrialLimit`` counts only trials
that hold or wait for a slot.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import SearchAlgorithm

from rest import selection
from rest.storage import Location
from rest.study import tune_ext
from rest.study.manifest import RUNGS_FILE

log = logging.getLogger(__name__)

# In the study directory, not Ray's experiment directory: a resumed Tune copies that one
# down to its staging directory and back up, which would put back an older copy.
BOOK_FILE = RUNGS_FILE
TIME_ATTR = "epoch"
OVER = (Trial.ERROR, Trial.TERMINATED)


def cut(records: list[dict], primary: str, reduction_factor: float) -> tuple[list[int], int]:
    """(indices of `records` from best to worst, how many continue): one rung's cut.

    `records` hold one record per trial at the rung epoch, in the group's fixed order;
    ``selection.rank`` is stable, so equal records keep that order.
    """
    return selection.rank(records, primary), max(1, math.floor(len(records) / reduction_factor + 1e-9))


class RungBook:
    """The cuts taken so far, on storage: ``{"pauses": n, "groups": {group: {rung: cut}}}``.

    A cut is ``{"ranked": [[trial label, val_rank], ...], "continue": [labels]}``. The
    file is read on first use (by the driver that runs the phase, which may be a resumed
    one) and rewritten whole, atomically, before each cut is acted on.
    """

    def __init__(self, file: Location | None):
        self.file = file
        self.state: dict[str, Any] | None = None

    def _loaded(self) -> dict[str, Any]:
        if self.state is None:
            if self.file is not None and self.file.exists():
                self.state = self.file.read_json()
            else:
                self.state = {"pauses": 0, "groups": {}}
        return self.state

    def get(self, group: str, rung: int) -> dict | None:
        return self._loaded()["groups"].get(group, {}).get(str(rung))

    def put(self, group: str, rung: int, decided: dict, pauses: int) -> None:
        state = self._loaded()
        state["groups"].setdefault(group, {})[str(rung)] = decided
        state["pauses"] = pauses
        if self.file is not None:
            self.file.write_text(json.dumps(state, indent=1))

    @property
    def pauses(self) -> int:
        return int(self._loaded()["pauses"])

    def __getstate__(self) -> dict:  # tuner.pkl keeps where the file is, never a stale copy of it
        return {**self.__dict__, "state": None}


class DeterministicHalving(TrialScheduler):
    """Synchronous successive halving per group, cut by the selection rule in a fixed trial order.

    `groups` (``per_cell.TrialGroups``) says each trial's group, the group's size and the
    trial's position in the search order; `rungs` are the rung epochs; `book` the file
    the cuts are kept in; `max_active` the driver's ``--max-concurrent`` (also enforced
    by ``ActiveTrialLimit`` on the search algorithm).
    """

    def __init__(
        self,
        groups,
        rungs: list[int],
        reduction_factor: float,
        primary: str,
        metric: str,
        book: Location | None = None,
        max_active: int | None = None,
    ):
        super().__init__()
        self.groups = groups
        self.rungs = sorted(rungs)
        self.rf = reduction_factor
        self.primary = primary
        self._metric = metric
        self.book = RungBook(book)
        self.max_active = max_active
        self.trials: dict[str, Trial] = {}
        self.records: dict[str, dict[int, dict]] = {}  # trial id -> rung -> its record there
        self.promoted: set[str] = set()  # paused trials a cut let continue
        self.failed: set[str] = set()  # trials that failed for good (Tune says so before it marks them ERROR)
        self.pauses = 0

    def __getstate__(self) -> dict:
        """tuner.pkl keeps the settings; a resumed driver rebuilds the rest from the book and the re-added trials."""
        return {**self.__dict__, "trials": {}, "records": {}, "promoted": set(), "failed": set(), "pauses": 0}

    # -------------------------------------------------------------- bookkeeping

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric in (None, self._metric) and mode in (None, "max")

    def _group(self, trial: Trial) -> str:
        return json.dumps(list(self.groups.group(trial.config)))

    def _members(self, group: str) -> list[Trial]:
        """The group's trials in its fixed order (trial ids only order identical configs)."""
        members = [t for t in self.trials.values() if self._group(t) == group]
        return sorted(members, key=lambda t: (self.groups.order(t.config), t.trial_id))

    def _labels(self, members: list[Trial]) -> dict[str, str]:
        """trial id -> its label in the book: its position in the search order (#n for a repeated config)."""
        seen: Counter = Counter()
        labels = {}
        for t in members:
            key = json.dumps(self.groups.order(t.config))
            labels[t.trial_id] = f"{key}#{seen[key]}" if seen[key] else key
            seen[key] += 1
        return labels

    def active(self) -> int:
        """Trials that hold or wait for a slot: running, pending, or paused and promoted."""
        return sum(
            t.status in (Trial.RUNNING, Trial.PENDING) or (t.status == Trial.PAUSED and t.trial_id in self.promoted)
            for t in self.trials.values()
        )

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self.trials[trial.trial_id] = trial
        self.failed.discard(trial.trial_id)  # a failed trial that resume runs again
        if self.pauses == 0:
            self.pauses = self.book.pauses  # a resumed driver goes on counting

    # ------------------------------------------------------------------ results

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        epoch = result.get(TIME_ATTR)
        if epoch is None:
            return TrialScheduler.CONTINUE
        group = self._group(trial)
        for rung in self.rungs:
            if rung > epoch:
                break
            decided = self.book.get(group, rung)
            if decided is None:
                if rung < epoch:
                    log.warning(
                        "trial %s reports epoch %s without having reported rung %s; its record joins that rung",
                        trial.trial_id,
                        epoch,
                        rung,
                    )
                self.records.setdefault(trial.trial_id, {})[rung] = {
                    k: v for k, v in result.items() if k.startswith("val_") or k == TIME_ATTR
                }
                last = epoch >= int(trial.config.get("epochs") or epoch + 1)  # a method's own, shorter training
                return self._settle(tune_controller, group, rung, trial, wait=not last) or TrialScheduler.CONTINUE
            if self._labels(self._members(group))[trial.trial_id] not in decided["continue"]:
                return TrialScheduler.STOP  # a stored cut, replayed
        return TrialScheduler.CONTINUE

    def _contenders(self, group: str, rung: int, members: list[Trial], labels: dict[str, str]) -> list[Trial]:
        """Members still in the race at `rung`: they passed the rung before and have not failed or ended without it."""
        earlier = [r for r in self.rungs if r < rung]
        before = self.book.get(group, earlier[-1]) if earlier else None
        return [
            t
            for t in members
            if (before is None or labels[t.trial_id] in before["continue"])
            and not ((t.status in OVER or t.trial_id in self.failed) and rung not in self.records.get(t.trial_id, {}))
        ]

    def _settle(
        self, tune_controller, group: str, rung: int, current: Trial | None, force: bool = False, wait: bool = True
    ) -> str | None:
        """Cut `rung` of `group` if the whole group is there; else pause `current` if it may `wait` (else None).

        A trial at its last epoch ranks at the rung like the others but never waits: it ends anyway.
        """
        members = self._members(group)
        labels = self._labels(members)
        contenders = self._contenders(group, rung, members, labels)
        complete = len(members) >= self.groups.size(json.loads(group)) and all(
            rung in self.records.get(t.trial_id, {}) for t in contenders
        )
        if not (complete or force):
            if current is None or not wait:
                return None
            self.promoted.discard(current.trial_id)
            self.pauses += 1
            return TrialScheduler.PAUSE
        scored = [t for t in contenders if rung in self.records.get(t.trial_id, {})]
        records = [self.records[t.trial_id][rung] for t in scored]
        order, keep = cut(records, self.primary, self.rf)
        decided = {
            "ranked": [[labels[scored[i].trial_id], records[i].get(self._metric)] for i in order],
            "continue": [labels[scored[i].trial_id] for i in order[:keep]],
        }
        self.book.put(group, rung, decided, self.pauses)  # stored before it is acted on
        log.info("rung %s of %s: %d of %d continue", rung, group, min(keep, len(scored)), len(scored))
        return self._act(tune_controller, decided, scored, labels, current)

    def _act(
        self, tune_controller, decided: dict, scored: list[Trial], labels: dict[str, str], current: Trial | None
    ) -> str | None:
        action = None
        for t in scored:
            wins = labels[t.trial_id] in decided["continue"]
            if t is current:
                action = TrialScheduler.CONTINUE if wins else TrialScheduler.STOP
            elif wins:
                self.promoted.add(t.trial_id)
            elif t.status not in OVER and t.trial_id not in self.failed:
                tune_ext.stop_trial(tune_controller, t)
        return action

    def _recheck(self, tune_controller, trial: Trial) -> None:
        """A trial left (ended, failed, removed): its group's open rung may be complete now."""
        group = self._group(trial)
        rung = next((r for r in self.rungs if self.book.get(group, r) is None), None)
        if rung is not None:
            self._settle(tune_controller, group, rung, None)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._recheck(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self.failed.add(trial.trial_id)
        self._recheck(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._recheck(tune_controller, trial)

    # --------------------------------------------------------------- scheduling

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """Pending trials first; then a promoted paused trial, in search order, while a slot is free."""
        trials = tune_controller.get_trials()
        pending = next((t for t in trials if t.status == Trial.PENDING), None)
        if pending is not None:
            return pending
        promoted = [t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.promoted]
        if not promoted:
            self._unstick(tune_controller, trials)  # trials it promotes run from Tune's next call
            return None
        if self.max_active is not None and sum(t.status == Trial.RUNNING for t in trials) >= self.max_active:
            return None
        return min(promoted, key=lambda t: (self._group(t), self.groups.order(t.config), t.trial_id))

    def _unstick(self, tune_controller, trials: list[Trial]) -> None:
        """Never hang: with nothing running or pending and the search finished, cut what waits as it stands.

        Only reached if a group can never fill (its size was counted wrongly); the
        warning says so, since such a cut depends on which trials the group got.
        """
        waiting = [t for t in trials if t.status == Trial.PAUSED]
        if (
            not waiting
            or any(t.status == Trial.RUNNING for t in trials)
            or not tune_controller.search_alg.is_finished()
        ):
            return None
        for group in dict.fromkeys(self._group(t) for t in waiting):
            rung = next((r for r in self.rungs if self.book.get(group, r) is None), None)
            if rung is not None:
                log.warning("group %s cannot fill rung %s; cutting it with the trials it has", group, rung)
                self._settle(tune_controller, group, rung, None, force=True)
        return None

    def debug_string(self) -> str:
        groups = self.book._loaded()["groups"]
        cuts = sum(len(g) for g in groups.values())
        return f"deterministic halving: {len(groups)} groups, {cuts} rung cuts, {self.pauses} pauses"


class ActiveTrialLimit(SearchAlgorithm):
    """A search algorithm that proposes a trial only while fewer than `max_active` trials run or wait for a slot.

    Ray's own limits (``max_concurrent_trials``, ``ConcurrencyLimiter``) count a trial
    paused at a rung as live, so under them a rung could never fill. Everything but
    ``next_trial`` is the wrapped algorithm's.
    """

    def __init__(self, inner: SearchAlgorithm, max_active: int, scheduler: DeterministicHalving):
        self.inner = inner
        self.max_active = max_active
        self.scheduler = scheduler

    def next_trial(self):
        if self.scheduler.active() >= self.max_active:
            return None
        return self.inner.next_trial()

    @property
    def metric(self):
        return self.inner.metric

    @property
    def total_samples(self):
        return self.inner.total_samples

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def add_configurations(self, experiments) -> None:
        self.inner.add_configurations(experiments)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    def is_finished(self) -> bool:
        return self.inner.is_finished()

    def set_finished(self) -> None:
        self.inner.set_finished()

    def has_checkpoint(self, dirpath: str) -> bool:
        return self.inner.has_checkpoint(dirpath)

    def save_to_dir(self, dirpath: str, **kwargs) -> None:
        self.inner.save_to_dir(dirpath, **kwargs)

    def restore_from_dir(self, dirpath: str) -> None:
        self.inner.restore_from_dir(dirpath)
