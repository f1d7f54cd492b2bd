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


def new_name(old: str) -> str | None:
    """The module now holding old module ``old`` (or a submodule of an old package), if it moved."""
    for prefix, moved in RENAMED.items():
        if old == prefix or old.startswith(prefix + "."):
            return moved + old[len(prefix) :]
    return None


class RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module that holds its code now (registered by ``rest/__init__``)."""

    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        name = new_name(spec.name)
        assert name is not None  # find_spec makes a spec only for a renamed module
        return importlib.import_module(name)

    def exec_module(self, module) -> None:
        """Nothing to run: the module was imported under its new name."""


def install() -> None:
    if not any(isinstance(f, RenamedModules) for f in sys.meta_path):
        sys.meta_path.append(RenamedModules())
