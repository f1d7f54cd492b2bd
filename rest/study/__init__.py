"""The study on Ray Tune: the study definition, the phases, the trials, the driver.

Imports the foundation and ``rest.core`` only. Nothing here is imported eagerly, so
``rest.report`` can read the on-storage contract without loading Ray. Public surface, by module:

- the study's definition and on-storage contract, which never reach Ray's runtime (``rest.report`` may
  import them): ``space`` (study files; ``space_methods``, ``space_values``, ``space_yaml``), ``manifest``
  (the study directory, ``find_study``), ``contract`` (what a trial leaves on storage and the names both
  sides use), ``trials`` (a phase's trials read back, for the driver and the report; of Ray only its
  file reader ``ray.tune.ExperimentAnalysis``), ``options`` (the driver's options), ``failures``,
  ``progress``, ``lock`` (one driver per study);
- the driver's Ray-free helpers: ``compact`` (finished trials keep their compact checkpoint), ``memory``
  (a trial's device bytes);
- on Ray: ``runner`` (``run_study``: the phases), ``search`` (the search phase's scheduler and searcher),
  ``per_cell`` (per-cell ASHA and searchers), ``rungs`` (deterministic halving), ``trainable`` (one trial),
  ``tracking`` (trackers), ``callbacks`` (stall watch, progress watch, compaction),
  ``driver`` (Ray connection, stop signals), ``tune_ext`` (every use of Ray Tune internals).
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
    from rest import legacy

    return legacy.find("rest.study", name)  # the old module's names: where they live now (legacy.ALSO_IN)
