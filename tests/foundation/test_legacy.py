"""Studies written before the layered layout pickled objects under the old flat module names."""

import importlib
import pickle

import pytest

from rest import legacy


def _renamed_pickle(obj, new: str, old: str) -> bytes:
    """``pickle.dumps(obj)`` as the old layout wrote it: module ``new`` named ``old`` (protocol 2: GLOBAL by text)."""
    data = pickle.dumps(obj, protocol=2)
    named = b"c" + new.encode() + b"\n"
    assert named in data
    return data.replace(named, b"c" + old.encode() + b"\n")


def test_the_trial_directory_function_pickled_as_rest_study_loads():
    from rest.study.contract import trial_dirname

    assert pickle.loads(_renamed_pickle(trial_dirname, "rest.study.contract", "rest.study")) is trial_dirname


@pytest.mark.parametrize("old", sorted(legacy.RENAMED))
def test_every_old_module_name_imports_and_its_names_are_the_objects_of_its_new_home(old):
    module, home = importlib.import_module(old), importlib.import_module(legacy.RENAMED[old])
    public = [n for n in vars(home) if not n.startswith("_")][:20]
    assert public and all(getattr(module, n) is getattr(home, n) for n in public)


def test_names_that_moved_on_or_were_renamed_resolve_where_their_code_is_now():
    """Ray pickled such names into tuner.pkl: e.g. the compaction callback of the old layout called
    rest.compact._compact_logged (a kill -9'd study of the old code resumed with this code only after this)."""
    from rest.core.data.base import SPLIT_NAMES, BiasedData
    from rest.study.callbacks import StallWatch
    from rest.study.compact import compact_logged
    from rest.study.per_cell import trial_cell

    assert importlib.import_module("rest.compact")._compact_logged is compact_logged
    assert importlib.import_module("rest.search").trial_cell is trial_cell  # moved on to per_cell
    assert importlib.import_module("rest.tracking").StallWatch is StallWatch
    import rest.data.base as old_base  # an old submodule: the same classes, never a second copy of the file

    assert old_base.BiasedData is BiasedData and old_base.SPLITS == SPLIT_NAMES
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        legacy.find("rest.search", "nothing_here")


def test_an_object_pickled_under_an_old_module_name_loads_as_the_same_object():
    from rest.study.options import RunOptions

    assert pickle.loads(_renamed_pickle(RunOptions, "rest.study.options", "rest.options")) is RunOptions


def test_old_submodule_names_and_unknown_names():
    assert legacy.new_name("rest.data.base") == "rest.core.data.base"
    assert legacy.new_name("rest.datasets") is None  # a prefix of a name is not the name
    with pytest.raises(ImportError):
        importlib.import_module("rest.no_such_module")
