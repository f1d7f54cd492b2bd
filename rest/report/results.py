"""The one reader of a study: its definition, manifest and both phases' trials, read-only.

Each phase's trials come from ``rest.study.trials`` (the reader the driver uses too):
status, config, every epoch's record, one table row each.

Nothing here writes: export and export-model read a study through this module and
leave its storage exactly as it was.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pandas as pd

from rest.errors import UserError
from rest.storage import Location
from rest.study.manifest import PHASES, frozen_spec
from rest.study.space import StudySpec
from rest.study.trials import CONFIG_KEYS, Trial, aggregate, read_phase, trial_row

log = logging.getLogger(__name__)


class ResultsError(UserError):
    pass


@dataclass
class StudyResults:
    location: Location
    spec: StudySpec
    manifest: dict
    phases: dict[str, list[Trial]]
    _trials: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.location.name)

    @property
    def path(self) -> Location:
        return self.location

    def all_trials(self) -> list[Trial]:
        return [t for phase in PHASES for t in self.phases.get(phase, [])]

    def trials(self) -> pd.DataFrame:
        """One row per trial of every phase: config, status, epochs, and its selected epoch's metrics."""
        if self._trials is None:  # export's tables and summary all read it: build it once
            self._trials = pd.DataFrame([trial_row(t, self.spec) for t in self.all_trials()])
        return self._trials.copy()

    def history(self) -> pd.DataFrame:
        """One row per (trial, epoch): every record each trial reported, exactly once."""
        rows = [
            {
                "phase": t.phase,
                "trial_id": t.trial_id,
                "role": t.role,
                **{k: t.config.get(k) for k in CONFIG_KEYS},
                **{k: v for k, v in r.items() if k != "config"},
            }
            for t in self.all_trials()
            for r in t.history
        ]
        return pd.DataFrame(rows)


def read_study(location: Location, spec: StudySpec | None = None) -> StudyResults:
    """Read a study directory (manifest, definition, both phases) without writing anything."""
    try:
        manifest = location.join("manifest.json").read_json()
    except FileNotFoundError:
        raise ResultsError(
            f"{location} is not a study directory (no manifest.json); pass a study's path or name"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResultsError(f"{location}/manifest.json is damaged (not JSON); restore it from a copy") from None
    spec = spec or frozen_spec(location, manifest)
    phases = {phase: read_phase(location.join(phase), phase) for phase in PHASES}
    return StudyResults(location, spec, manifest, phases)


def search_configs(study: StudyResults) -> pd.DataFrame:
    """The search phase's configs that ran an epoch, aggregated over seeds."""
    spec = study.spec
    trials = study.trials()
    search = trials[(trials["phase"] == "search") & (trials["epochs_run"] > 0)]
    return aggregate(search, spec.compare_within + ["density"] + [k for k in spec.searched_keys() if k != "density"])
