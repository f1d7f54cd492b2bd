"""Reading and reporting, read-only: the study reader, tables, plots, progress from storage.

Imports the foundation and the study's Ray-free on-storage contract; reads Ray's experiment
files with Ray's own reader and never starts Ray. Public surface, by module:

- ``results``: ``StudyResults``, the one reader of a study (trials, histories, checkpoints);
- ``tables``: the tables as DataFrames (``best_configs``, ``by_density``, ``paper_table``);
- ``export``: ``export`` (every table as md / csv / tex, the plot, the summary); ``export_dir``;
- ``plots``: the density plot; ``status``: a study's progress, read from storage alone.
"""

__all__ = ["export", "export_dir", "plots", "results", "status", "tables"]
