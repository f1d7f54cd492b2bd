"""The command line (``tune_search.py``, ``rest-tune``): one module per command group.

``main`` is the entry point; ``common`` holds the parser pieces and the progress bar.
Imports anything, and torch and Ray only inside a command, so ``--help`` stays fast.
"""

__all__ = ["common", "main", "prepare", "status"]
