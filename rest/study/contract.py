"""The one contract between the study driver and a trial: what a trial leaves on storage, what it reports.

The writers (``trainable``, ``compact``, ``runner``, ``tracking``, ``tune_ext``) and the readers
(``rest.report.results``, ``rest.report.status``, model files) all take these names from here, and
nothing else spells them. A study directory holds one folder per phase (a Ray experiment):

- ``experiment_state-*.json``: Ray's experiment snapshots (``STATE_PREFIX``);
- ``trial_<id>/`` per trial (``trial_dirname``), holding ``history.json`` (every epoch record,
  rewritten each epoch), Ray's ``error.txt`` when it failed, and ``checkpoint_*`` directories,
  each with ``state.pt`` (the training state) or, once the trial ended and was compacted,
  ``compact.pt``, plus a copy of the history;
- beside the phases, ``stalls.log`` (the stall watch's reports).

Each epoch a trial reports the few keys in ``REPORTED`` to Ray (its schedulers and searchers read
them); the whole record goes to its history file. Imports neither Ray nor pandas (torch only
inside ``read_checkpoint``).
"""

from __future__ import annotations

import logging

from rest import selection
from rest.storage import Location

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ file names

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"  # in the trial directory, and in each of its checkpoints
# A finished trial's checkpoint, compacted by the driver (rest.study.compact): no optimizer state, the
# best-epoch weights in model-file form. Read before STATE_FILE in the same checkpoint directory.
COMPACT_FILE = "compact.pt"
TRIAL_PREFIX = "trial_"  # a trial's directory: trial_<trial id>
CHECKPOINT_PREFIX = "checkpoint_"  # Ray numbers a trial's checkpoint directories in order
STATE_PREFIX = "experiment_state-"  # Ray's experiment snapshots in a phase's directory
TRIAL_ERROR_FILE = "error.txt"  # Ray appends each failure of a trial here, in the trial's directory
STALL_LOG = "stalls.log"  # in the study directory: what the stall watch reported

# ------------------------------------------------------------------ metric names

# ASHA wants one number; selection.scalar encodes the project's selection rule in it.
METRIC, MODE, TIME_ATTR = "val_rank", "max", "epoch"
# A model-based searcher learns from each trial's best epoch so far (the epoch the
# selection rule would pick), not its last: a trial stopped at a worse epoch keeps its peak.
SEARCHER_METRIC = "best_val_rank"
# What a trial reports to Ray each epoch. Ray keeps statistics of every numeric key it
# receives in its experiment snapshot, so only these go there: the schedulers' keys (the
# epoch, METRIC, and the validation keys the selection rule ranks a rung by), the
# searchers' metric, and where and how the trial ran (node, process, resumes). The whole
# epoch record goes to the trial's history file (HISTORY_FILE).
REPORTED = (
    TIME_ATTR,
    METRIC,
    SEARCHER_METRIC,
    *selection.RANKED,
    "node_id",
    "pid",
    "resumed_from_epoch",
    "restore_seconds",
)
STATISTICS = (TIME_ATTR, METRIC, SEARCHER_METRIC)  # keys Tune keeps running statistics of (tune_ext)


def reported(record: dict) -> dict:
    """The part of an epoch record a trial reports to Ray."""
    return {k: record[k] for k in REPORTED if k in record}


# ------------------------------------------------------------------ trials and checkpoints


def trial_dirname(trial) -> str:
    """The name of a trial's directory in its phase's experiment directory (`trial`: anything with a ``trial_id``).

    Also Ray's ``trial_dirname_creator``: every tuner.pkl and experiment snapshot names this function by its
    module and name, so both stay (``rest.study.__getattr__`` serves studies written before the packages).
    """
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def flat_config(config: dict) -> dict:
    """A trial's training settings. Studies written before confirm configs were flat nest them under 'cfg'."""
    return dict(config.get("cfg", config))


def checkpoint_dirs(trial: Location) -> list[Location]:
    """A trial's checkpoint directories, newest first (Ray numbers them in order)."""
    found = (c for c in trial.children() if c.name.startswith(CHECKPOINT_PREFIX))
    return sorted(found, key=lambda c: c.name, reverse=True)


def checkpoint_history(trial: Location) -> list[dict]:
    """The per-epoch records kept in the trial's newest readable checkpoint."""
    for ckpt in checkpoint_dirs(trial):
        file = ckpt.join(HISTORY_FILE)
        try:
            return file.read_json()
        except Exception as exc:  # a checkpoint cut short by a crash: try the one before
            log.debug("no readable history in %s: %s", ckpt, exc)
    return []


def read_checkpoint(ckpt: Location) -> dict:
    """The state in one checkpoint directory: its compact file if it has one, else its training state."""
    import io

    import torch

    try:
        f = ckpt.fs.open_input_file(ckpt.join(COMPACT_FILE).path)
    except FileNotFoundError:
        f = ckpt.fs.open_input_file(ckpt.join(STATE_FILE).path)
    with f:
        return torch.load(io.BytesIO(f.read()), weights_only=False, map_location="cpu")


def checkpoint_states(trial: Location):
    """(checkpoint, training state, None) of a trial's checkpoints, newest first; (checkpoint,
    None, reason) where one cannot be read (a crash mid-write, a damaged file)."""
    for ckpt in checkpoint_dirs(trial):
        try:
            state = read_checkpoint(ckpt)
        except Exception as exc:  # incomplete checkpoint (crash mid-write): the previous one
            yield ckpt, None, exc
            continue
        yield ckpt, state, None


def newest_state(trial: Location, min_epoch: int = 0) -> dict | None:
    """The newest readable training state in a trial's checkpoints (None if there is none).

    What a resumed trial continues from. Not what export-model writes: an older state's
    best-so-far weights need not be the epoch the tables report (``model_file.trial_state``).
    """
    for ckpt, state, exc in checkpoint_states(trial):
        if state is None:
            log.warning("skipping unreadable checkpoint %s: %s", ckpt, exc)
        elif state["epoch"] >= min_epoch:
            return state
    return None


class ConfigRoles:
    """A trial's role and method, as the study wrote them into its config's ``extra``."""

    config: dict

    @property
    def role(self) -> str:
        return (self.config.get("extra") or {}).get("role", "search")

    @property
    def method(self) -> str | None:
        """The method label of a methods study's trial (None in single-method studies)."""
        return (self.config.get("extra") or {}).get("method")
