"""The command line (``tune_search.py``, ``rest-tune``): one module per command group.

``main`` is the entry point: it builds the parser from the command-group modules, each adding its
commands with ``add_parser`` and a handler:

- ``train``: ``train``; ``study``: ``run``, ``resume``; ``status``: ``status``; ``export``: ``export``;
- ``model``: ``export-model``, ``predict``; ``prepare``: ``prepare-data`` (cmnist, cifar10c, check).

``common`` holds what they share: the program name, the parser class and the progress bars.
Imports anything, and torch and Ray only inside a command, so ``--help`` stays fast.
"""

__all__ = ["common", "export", "main", "model", "prepare", "status", "study", "train"]
