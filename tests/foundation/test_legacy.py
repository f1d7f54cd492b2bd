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
def test_every_old_module_name_imports_as_the_module_holding_its_code_now(old):
    assert importlib.import_module(old) is importlib.import_module(legacy.RENAMED[old])


def test_an_object_pickled_under_an_old_module_name_loads_as_the_same_object():
    from rest.study.options import RunOptions

    assert pickle.loads(_renamed_pickle(RunOptions, "rest.study.options", "rest.options")) is RunOptions


def test_old_submodule_names_and_unknown_names():
    assert legacy.new_name("rest.data.base") == "rest.core.data.base"
    assert legacy.new_name("rest.datasets") is None  # a prefix of a name is not the name
    with pytest.raises(ImportError):
        importlib.import_module("rest.no_such_module")
