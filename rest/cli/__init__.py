"""The command line (``tune_search.py``, ``rest-tune``): one module per command group.

``main`` is the entry point (it builds the parser from the group modules: train, study (run, resume),
status, export, model (export-model, predict), prepare); ``common`` holds the parser pieces and the progress bar.
Imports anything, and torch and Ray only inside a command, so ``--help`` stays fast.
"""

__all__ = ["common", "export", "main", "model", "prepare", "status", "study", "train"]
