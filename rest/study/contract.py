"""What a trial leaves in its directory, and how its config names it: the part of the study reader that
needs neither pandas nor Ray (``status`` reads studies with it; ``rest.report.results`` builds on it)."""

from __future__ import annotations

import logging

from rest.storage import Location

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"  # in the trial directory, and in each of its checkpoints


def flat_config(config: dict) -> dict:
    """A trial's training settings. Studies written before confirm configs were flat nest them under 'cfg'."""
    return dict(config.get("cfg", config))


def checkpoint_dirs(trial: Location) -> list[Location]:
    """A trial's checkpoint directories, newest first (Ray numbers them in order)."""
    return sorted((c for c in trial.children() if c.name.startswith("checkpoint_")), key=lambda c: c.name, reverse=True)


def checkpoint_history(trial: Location) -> list[dict]:
    """The per-epoch records kept in the trial's newest readable checkpoint."""
    for ckpt in checkpoint_dirs(trial):
        file = ckpt.join(HISTORY_FILE)
        try:
            return file.read_json()
        except Exception as exc:  # a checkpoint cut short by a crash: try the one before
            log.debug("no readable history in %s: %s", ckpt, exc)
    return []


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
