"""Progress arithmetic shared by ``status`` and the console's progress line (no Ray, no torch)."""
from __future__ import annotations


def eta_seconds(epochs_left: int, seconds_per_epoch: float | None, slots: int) -> float | None:
    """Seconds until `epochs_left` trial-epochs are trained, `slots` trials at a time; None before an epoch was timed."""
    if not seconds_per_epoch or slots < 1:
        return None
    return epochs_left * seconds_per_epoch / slots
