"""The study on Ray Tune: the study definition, the phases, the trials, the driver.

Imports the foundation and ``rest.core`` only. Nothing here is imported eagerly, so
``rest.report`` can read the on-storage contract without loading Ray. Public surface, by module:

- the study's definition and on-storage contract, Ray-free: ``space`` (study files; ``space_methods``,
  ``space_values``, ``space_yaml``), ``manifest`` (the study directory), ``contract`` (what a trial
  leaves on storage and the names both sides use), ``trials`` (a phase's trials read back, with Ray's reader),
  ``options`` (the driver's options), ``failures``, ``progress``, ``lock`` (the driver lock);
- on Ray: ``runner`` (``run_study``: the phases), ``search`` (the search phase's scheduler and searcher),
  ``per_cell`` (per-cell ASHA and searchers), ``rungs`` (deterministic halving), ``trainable`` (one trial),
  ``tracking`` (trackers), ``callbacks`` (stall watch, progress watch),
  ``driver`` (Ray connection, stop signals), ``compact`` (finished trials), ``memory``,
  ``tune_ext`` (every use of Ray Tune internals).
"""

__all__ = [
    "callbacks",
    "compact",
    "contract",
    "driver",
    "failures",
    "lock",
    "manifest",
    "memory",
    "options",
    "per_cell",
    "progress",
    "rungs",
    "runner",
    "search",
    "space",
    "space_methods",
    "space_values",
    "space_yaml",
    "tracking",
    "trainable",
    "trials",
    "tune_ext",
]


def __getattr__(name: str):
    """``rest.study.<name>`` of a study written when ``rest.study`` was one module (now ``rest.study.runner``).

    Ray pickled ``rest.study.trial_dirname`` (now ``contract.trial_dirname``) into every experiment snapshot of
    such a study, and its callbacks into ``tuner.pkl``.
    """
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # `from rest.study import search` asks here first
        return importlib.import_module(f"{__name__}.{name}")
    if name == "trial_dirname":  # Ray-free: reading an old study needs no Ray
        from rest.study.contract import trial_dirname

        return trial_dirname
    runner = importlib.import_module("rest.study.runner")
    try:
        return getattr(runner, name)
    except AttributeError:
        raise AttributeError(f"module 'rest.study' has no attribute '{name}'") from None
