"""Every value a study file's search can give a setting, checked by TrainSettings' own rule.

A trial that draws an impossible value fails at run time, and its cell would go
missing from the tables; so a study is refused before anything starts when any
value its search can reach is invalid. "Reach" means, per distribution:

- grid, choice: every listed value; lookup: every value of its table;
- uniform, loguniform: both ends of the range;
- randint: low and high - 1 (Ray's upper bound is exclusive);
- quniform, qrandint: the multiples of q nearest each end, on either side (Ray's own
  generator rounds the ends inwards, hyperopt rounds draws to the nearest multiple,
  which can fall outside the range).

Each such value is validated through ``TrainSettings.validate`` (one rule for flags,
study files and trials), first on its own over the fixed settings, then in every
combination with the other searched keys' values, so that rules across keys
(``drop_rate_min`` below ``drop_rate``) hold for every trial too. The validity rules
are intervals, so the ends of a range stand for all of it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from rest.settings import SettingsError, TrainSettings

# Distribution name -> number of arguments (None: a non-empty list of values; 0: a lookup table).
SEARCH_DISTRIBUTIONS: dict[str, int | None] = {
    "grid": None, "choice": None, "uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "qrandint": 3,
    "lookup": 0,
}  # fmt: skip
RANGE_NAMES = ("uniform", "loguniform", "quniform", "randint", "qrandint")
INTEGER_RANGE_NAMES = ("randint", "qrandint")  # draw integers; the others draw fractions (quniform: multiples of q)
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainSettings)}  # what a study file may set
KINDS = {f.name: str(f.type).split(" |")[0] for f in dataclasses.fields(TrainSettings)}  # "int", "float", "str", ...
MAX_COMBINATIONS = 20_000  # validated in combination up to this many; beyond it, each key alone


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_distribution(c, key: str, dist: Any) -> None:
    """The shape of one distribution ({name: args}); `c` is rest.study.space's checker, `key` its dotted name."""
    if not isinstance(dist, dict) or len(dist) != 1:
        raise c.fail(
            key, f"must be one distribution such as {{grid: [...]}}; choose from {', '.join(SEARCH_DISTRIBUTIONS)}"
        )
    ((name, args),) = dist.items()
    if name not in SEARCH_DISTRIBUTIONS:
        raise c.fail(key, f"uses unknown distribution '{name}'; choose from {', '.join(SEARCH_DISTRIBUTIONS)}")
    n = SEARCH_DISTRIBUTIONS[name]
    if n == 0:
        if not (
            isinstance(args, dict)
            and set(args) == {"key", "table"}
            and args["key"] in KINDS
            and isinstance(args["table"], dict)
            and args["table"]
        ):
            raise c.fail(key, "lookup needs {key: <setting>, table: {<value>: <result>, ...}}")
        return
    if not isinstance(args, list) or (n is None and not args) or (n is not None and len(args) != n):
        need = "a non-empty list" if n is None else f"a list of {n} numbers"
        raise c.fail(key, f"{name} needs {need}, got {args!r}")
    if n is None:
        _check_listed(c, key, name, args)
        return
    if not (all(is_number(a) and math.isfinite(a) for a in args) and args[0] < args[1]):
        raise c.fail(key, f"{name} needs numbers [low, high{', q' if n == 3 else ''}] with low < high, got {args!r}")
    if name == "loguniform" and args[0] <= 0:
        raise c.fail(key, f"loguniform needs a positive lower bound, got {args[0]}")
    if n == 3 and args[2] <= 0:
        raise c.fail(key, f"{name} needs a positive step q, got {args[2]}")
    if name in INTEGER_RANGE_NAMES and not all(float(a).is_integer() for a in args):
        raise c.fail(key, f"{name} draws integers and needs integer [low, high, q], got {args!r}")


def _check_listed(c, key: str, name: str, values: list) -> None:
    """A grid or choice lists each value once (a repeat would train the same config twice under one row)."""
    for i, v in enumerate(values):
        if any(s == v and (type(s) is type(v) or (is_number(s) and is_number(v))) for s in values[:i]):
            raise c.fail(key, f"{name} lists {v!r} twice; give each value once")


def check_kind(c, key: str, field: str, dist: dict) -> None:
    """A range needs a numeric setting, and an integer setting needs a range that draws integers."""
    ((name, args),) = dist.items()
    if name not in RANGE_NAMES:
        return
    kind = KINDS.get(field)
    if kind not in ("int", "float"):
        raise c.fail(
            key,
            f"uses {name}, a range of numbers, but {field} is {kind_text(kind)}; list its values with grid or choice",
        )
    if kind == "int" and name not in INTEGER_RANGE_NAMES and not (name == "quniform" and float(args[2]).is_integer()):
        raise c.fail(key, f"uses {name}, which draws fractions, but {field} is an integer; use randint or qrandint")


def kind_text(kind: str | None) -> str:
    return {"str": "text", "dict": "a mapping", "int": "an integer", "float": "a number"}.get(kind or "", str(kind))


def _on_grid(bound: float, q: float, rounding) -> float:
    """`bound` as a multiple of q, rounded with `rounding` unless it already is one (as Ray does)."""
    scaled = bound / q
    return round(scaled) * q if math.isclose(scaled, round(scaled)) else rounding(scaled) * q


def reachable(name: str, args: Any) -> list:
    """The values of a distribution that stand for all it can draw (see the module docstring)."""
    if name in ("grid", "choice"):
        return list(args)
    if name == "lookup":
        return list(args["table"].values())
    low, high = args[0], args[1]
    if name in ("uniform", "loguniform"):
        return [low, high]
    if name == "randint":
        return [low, high - 1]
    q = args[2]
    if name == "qrandint" and q == 1:
        return [low, high - 1]
    return sorted({_on_grid(end, q, rounding) for end in (low, high) for rounding in (math.floor, math.ceil)})


def check_values(c, fixed: dict[str, Any], search: dict[str, dict], prefix: str = "search") -> None:
    """Every value the search reaches is a valid setting: each key alone over `fixed`, then in combination."""
    for key, dist in search.items():
        check_kind(c, f"{prefix}.{key}", key, dist)
        ((name, args),) = dist.items()
        if name in ("quniform", "qrandint") and _on_grid(args[0], args[2], math.ceil) > args[1]:
            raise c.fail(
                f"{prefix}.{key}",
                f"{name} {args!r} has no multiple of q={args[2]:g} between {args[0]:g} "
                f"and {args[1]:g}; widen the range or lower q",
            )
        for value in reachable(name, args):
            try:
                TrainSettings.from_dict({**fixed, key: value}).validate()
            except SettingsError as exc:
                reach = (
                    f"{name} value {value!r}"
                    if name in ("grid", "choice")
                    else (f"lookup value {value!r}" if name == "lookup" else f"{name} {args!r} reaches {value:g}")
                )
                raise c.fail(f"{prefix}.{key}", f"{reach}: {exc}") from None
    _check_combinations(c, fixed, search, prefix)


def _check_combinations(c, fixed: dict[str, Any], search: dict[str, dict], prefix: str) -> None:
    """Rules across settings (drop_rate_min below drop_rate, ...) hold for every combination of reached values."""
    drawn = {k: reachable(*next(iter(d.items()))) for k, d in search.items() if "lookup" not in d}
    lookups = {k: d["lookup"] for k, d in search.items() if "lookup" in d}
    if len(search) < 2 or math.prod(len(v) for v in drawn.values()) > MAX_COMBINATIONS:
        return
    for values in itertools.product(*drawn.values()):
        config = {**fixed, **dict(zip(drawn, values))}
        for key, spec in lookups.items():  # an entry for every value is checked elsewhere
            source = config.get(spec["key"], getattr(TrainSettings(), spec["key"]))
            table = {float(k) if is_number(k) else k: v for k, v in spec["table"].items()}
            if (float(source) if is_number(source) else source) in table:
                config[key] = table[float(source) if is_number(source) else source]
        try:
            TrainSettings.from_dict(config).validate()
        except SettingsError as exc:
            shown = ", ".join(f"{k} {config.get(k)!r}" for k in search)
            raise c.fail(prefix, f"reaches the combination {shown}, which is invalid: {exc}") from None
