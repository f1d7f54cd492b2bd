"""The study on Ray Tune: the study definition, the phases, the trials, the driver.

Imports the foundation and ``rest.core`` only. Nothing here is imported eagerly, so
``rest.report`` can read the on-storage contract without loading Ray. Public surface, by module:

- the study's definition and on-storage contract, Ray-free: ``space`` (study files; ``space_methods``,
  ``space_values``, ``space_yaml``), ``manifest`` (the study directory), ``contract`` (what a trial
  leaves on storage and the names both sides use),
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
    "tune_ext",
]
