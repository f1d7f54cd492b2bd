"""Reading and reporting, read-only: the study reader, tables, plots, progress from storage.

Imports the foundation and the study's modules that never reach Ray's runtime (the on-storage
contract ``rest.study.contract``, the trial reader ``rest.study.trials``, the study definition, ...);
reads Ray's experiment files with Ray's own reader (``ray.tune.ExperimentAnalysis``) and never
starts Ray. Public surface, by module:

- ``results``: ``StudyResults``, the one reader of a study (built on ``rest.study.trials``);
- ``tables``: the tables as DataFrames (``best_configs``, ``by_density``, ``paper_table``);
- ``export``: ``export`` (every table as md / csv / tex, the plot, the summary), ``read_for_export``;
  ``export_dir``: one export per output directory;
- ``plots``: the density plot; ``status``: a study's progress, read from storage alone.
"""

__all__ = ["export", "export_dir", "plots", "results", "status", "tables"]
