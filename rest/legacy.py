"""Module names from before the layered layout, for studies written then.

Ray pickles objects of this project into a study's files by module name (the trial
directory function in every experiment snapshot, the searchers and callbacks in
``tuner.pkl``). A study started before the modules moved into ``rest.core``,
``rest.study``, ``rest.report``, ``rest.deploy`` and ``rest.cli`` names them by their
old flat names (``rest.search``, ``rest.tune_ext``, ...), so reading or resuming it
imports those names. This finder answers each old name with the module that now holds
that code: the same module object, not a copy. Old ``rest.study.<name>`` (that module
is now the package) is answered by ``rest.study.__getattr__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

RENAMED = {
    "rest.data": "rest.core.data",
    "rest.prepare": "rest.core.prepare",
    "rest.corruptions": "rest.core.corruptions",
    "rest.batches": "rest.core.batches",
    "rest.models": "rest.core.models",
    "rest.sparse": "rest.core.sparse",
    "rest.reweight": "rest.core.reweight",
    "rest.losses": "rest.core.losses",
    "rest.pgd": "rest.core.pgd",
    "rest.dcwp": "rest.core.dcwp",
    "rest.train": "rest.core.train",
    "rest.device": "rest.core.device",
    "rest.space": "rest.study.space",
    "rest.space_values": "rest.study.space_values",
    "rest.space_yaml": "rest.study.space_yaml",
    "rest.manifest": "rest.study.manifest",
    "rest.options": "rest.study.options",
    "rest.failures": "rest.study.failures",
    "rest.progress": "rest.study.progress",
    "rest.search": "rest.study.search",
    "rest.rungs": "rest.study.rungs",
    "rest.trainable": "rest.study.trainable",
    "rest.tracking": "rest.study.tracking",
    "rest.driver": "rest.study.driver",
    "rest.tune_ext": "rest.study.tune_ext",
    "rest.compact": "rest.study.compact",
    "rest.trial_files": "rest.study.contract",
    "rest.memory": "rest.study.memory",
    "rest.results": "rest.report.results",
    "rest.export": "rest.report.export",
    "rest.export_dir": "rest.report.export_dir",
    "rest.plots": "rest.report.plots",
    "rest.status": "rest.report.status",
    "rest.model_file": "rest.deploy.model_file",
    "rest.infer": "rest.deploy.infer",
    "rest._sparse_kernel": "rest.deploy.kernel",
    "rest.cli_common": "rest.cli.common",
    "rest.cli_prepare": "rest.cli.prepare",
    "rest.cli_status": "rest.cli.status",
}


# Where an old module's other names went, after its new home (searched in this order), for names
# that moved to a module split off from it.
ALSO_IN = {
    "rest.search": ("rest.study.per_cell", "rest.study.contract"),
    "rest.compact": ("rest.study.callbacks", "rest.study.contract", "rest.core.model_format"),
    "rest.tracking": ("rest.study.callbacks", "rest.study.contract"),
    # old rest.study (its name is now the package): the Ray-free modules first, so reading an old study's
    # snapshot (it names rest.study.trial_dirname, now in contract) loads no Ray; runner last
    "rest.study": (
        "rest.study.contract",
        "rest.study.trials",
        "rest.study.callbacks",
        "rest.study.lock",
        "rest.study.runner",
    ),
    "rest.tune_ext": ("rest.study.contract", "rest.study.trials"),
    "rest.driver": ("rest.study.lock",),
    "rest.trainable": ("rest.study.contract", "rest.study.runner"),
    "rest.results": ("rest.study.trials", "rest.study.contract", "rest.core.model_format"),
    "rest.trial_files": ("rest.study.trials",),
    "rest.export": ("rest.report.tables", "rest.study.manifest"),
    "rest.model_file": ("rest.core.model_format",),
    "rest.space": ("rest.study.space_methods", "rest.study.space_values"),
}
# Names that were renamed as well as moved: (old module, old name) -> (module, name).
RENAMED_NAMES = {
    ("rest.compact", "_compact_logged"): ("rest.study.compact", "compact_logged"),
    ("rest.sparse", "_top_mask"): ("rest.core.sparse", "top_mask"),
    ("rest.export", "PRIMARY_PREFIX"): ("rest.selection", "RANKING_PREFIXES"),
    ("rest.export", "_pool"): ("rest.report.tables", "selection_pool"),
    ("rest.export", "_primary"): ("rest.report.tables", "primary_metric"),
    ("rest.export", "load_study"): ("rest.report.export", "read_for_export"),
    ("rest.train", "SPLITS"): ("rest.core.train", "SPLIT_PREFIXES"),
    ("rest.data.base", "SPLITS"): ("rest.core.data.base", "SPLIT_NAMES"),
}


def new_name(old: str) -> str | None:
    """The module now holding old module ``old`` (or a submodule of an old package), if it moved."""
    for prefix, moved in RENAMED.items():
        if old == prefix or old.startswith(prefix + "."):
            return moved + old[len(prefix) :]
    return None


_MISSING = object()


def find(old_module: str, name: str):
    """What ``old_module.name`` was: the object of that name where its code lives now."""
    home = new_name(old_module)  # None for old rest.study, whose name is now the package: ALSO_IN only
    if (old_module, name) in RENAMED_NAMES:
        home, name = RENAMED_NAMES[old_module, name]
    for module in (*([home] if home else []), *ALSO_IN.get(old_module, ())):
        found = getattr(importlib.import_module(module), name, _MISSING)
        if found is not _MISSING:
            return found
    raise AttributeError(f"module '{old_module}' (now {home or old_module}) has no attribute '{name}'")


class OldModule(types.ModuleType):
    """An old module name: each attribute is looked up where that code lives now (``find``)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return find(self.__name__, name)


class RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as an ``OldModule`` (registered by ``rest/__init__``)."""

    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        name = new_name(spec.name)
        assert name is not None  # find_spec makes a spec only for a renamed module
        home = importlib.import_module(name)
        module = OldModule(spec.name, f"old name of {name}")
        if hasattr(home, "__path__"):  # an old package: its old submodule names import too
            module.__path__ = home.__path__
        return module

    def exec_module(self, module) -> None:
        """Nothing to run: every attribute is looked up where it lives now."""


def install() -> None:
    if not any(isinstance(f, RenamedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, RenamedModules())  # first: the path finder would load an old submodule twice
