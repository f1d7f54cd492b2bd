"""A methods study (``methods:`` in a study file): each method's fixed settings and its own grid.

Every method's grid is expanded into whole configs (``expand``), one set per cell;
``check_methods`` refuses a method with an invalid config before the study starts.
``c`` is rest.study.space's checker (it names the key and its YAML line).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from rest.settings import SettingsError, TrainSettings
from rest.study.space_values import TRAIN_FIELDS, check_distribution, is_number

METHOD_KEYS = {"train", "search"}
# Distributions a methods study expands itself (into one grid of whole configs).
METHOD_DISTRIBUTION_NAMES = ("grid", "lookup")


@dataclass
class Method:
    """One method of a methods study: its fixed settings and its own (grid) search."""

    name: str
    train: dict[str, Any] = field(default_factory=dict)
    search: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_methods(c, value: Any, train_values: dict, search: dict, cells: list[str]) -> list[Method]:
    """Validate `methods:` (label -> {train: {...}, search: {key: {grid: [...]}}}): every config valid."""
    if value is None:
        return []
    if not isinstance(value, dict) or not value:
        raise c.fail(
            "methods", "must map method names to {train: {...}, search: {...}}, e.g. ERM: {train: {reweight: none}}"
        )
    for key, dist in search.items():
        if next(iter(dist)) not in METHOD_DISTRIBUTION_NAMES:
            raise c.fail(
                f"search.{key}", f"uses '{next(iter(dist))}'; a methods study expands grids, so use grid or lookup"
            )
    methods = []
    for name, body in value.items():
        where = f"methods.{name}"
        if not isinstance(name, str) or not name.strip():
            raise c.fail("methods", f"has a method named {name!r}; name each method with text, e.g. PGD")
        body = c.mapping(body, where, METHOD_KEYS)
        fixed = dict(c.mapping(body.get("train"), f"{where}.train", TRAIN_FIELDS))
        own = c.mapping(body.get("search"), f"{where}.search", TRAIN_FIELDS)
        for key in (*fixed, *own):
            if key in search:
                raise c.fail(
                    f"{where}.{'train' if key in fixed else 'search'}.{key}",
                    "is also under the study's search; a setting is shared (search) or the method's, not both",
                )
            if key in cells:
                raise c.fail(
                    f"{where}.{'train' if key in fixed else 'search'}.{key}",
                    f"is a cell key (compare_within: {', '.join(cells)}); cells are shared by every method",
                )
        for key, dist in own.items():
            check_distribution(c, f"{where}.search.{key}", dist)
            if next(iter(dist)) not in METHOD_DISTRIBUTION_NAMES:
                raise c.fail(
                    f"{where}.search.{key}", f"uses '{next(iter(dist))}'; a method's search is a grid (or lookup)"
                )
            if key in fixed:
                raise c.fail(f"{where}.search.{key}", "is also fixed under the method's train; keep it in one place")
        method = Method(str(name), fixed, dict(own))
        try:
            for config in expand({**train_values, **fixed}, {**search, **own}):
                TrainSettings.from_dict(config).validate()
        except SettingsError as exc:
            raise c.fail(where, f"has an invalid config: {exc}") from None
        except KeyError as exc:
            raise c.fail(where, f"has a lookup without an entry for {exc.args[0]}; add it to the table") from None
        methods.append(method)
    return methods


def expand(fixed: dict[str, Any], search: dict[str, dict]) -> list[dict[str, Any]]:
    """Every combination of the grids (lookups resolved from the combination), over `fixed`."""
    grids = {k: d["grid"] for k, d in search.items() if "grid" in d}
    lookups = {k: d["lookup"] for k, d in search.items() if "lookup" in d}
    configs = []
    for values in itertools.product(*grids.values()):
        config = {**fixed, **dict(zip(grids, values))}
        defaults = TrainSettings()
        for key, spec in lookups.items():
            source = config.get(spec["key"], getattr(defaults, spec["key"]))
            table = {float(k) if is_number(k) else k: v for k, v in spec["table"].items()}
            config[key] = table[float(source) if is_number(source) else source]
        configs.append(config)
    return configs
