"""The study on Ray Tune: the study definition, the phases, the trials, the driver.

Imports the foundation and ``rest.core`` only. Nothing here is imported eagerly, so
``rest.report`` can read the on-storage contract without loading Ray. Public surface, by module:

- the study's definition and on-storage contract, Ray-free: ``space`` (study files), ``manifest`` (the
  study directory), ``contract`` (what a trial leaves on storage and the names both sides use),
  ``options`` (the driver's options), ``failures``, ``progress``, ``lock`` (the driver lock);
- on Ray: ``runner`` (``run_study``: the phases), ``search`` (per-cell ASHA and searchers),
  ``rungs`` (deterministic halving), ``trainable`` (one trial), ``tracking`` (trackers, stall watch),
  ``driver`` (Ray connection, stop signals), ``compact`` (finished trials), ``memory``,
  ``tune_ext`` (every use of Ray Tune internals).
"""

__all__ = [
    "compact",
    "contract",
    "driver",
    "failures",
    "lock",
    "manifest",
    "memory",
    "options",
    "progress",
    "rungs",
    "runner",
    "search",
    "space",
    "space_values",
    "space_yaml",
    "tracking",
    "trainable",
    "tune_ext",
]


def __getattr__(name: str):
    """``rest.study.trial_dirname``: the name the Ray snapshots and tuner.pkl of studies written before the
    packages give their trial-directory function (then in rest/study.py); it is ``contract.trial_dirname`` now."""
    if name == "trial_dirname":
        from rest.study.contract import trial_dirname

        return trial_dirname
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
