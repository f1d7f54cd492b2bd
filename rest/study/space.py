"""Study definitions: the YAML schema of ``search_spaces/*.yaml``, validated.

A study file holds fixed training settings, the searched settings (each a Ray
Tune distribution), the ASHA scheduler, how cells are formed, the confirm phase
and per-trial resources. ``load_space`` turns it into a ``StudySpec`` or raises a
``SpaceError`` naming the key and its YAML line. See docs/search_spaces.md.

Only PyYAML and the standard library are imported here: validating a study must
not wait for torch or ray.

Why a hand-written checker and not pydantic (which Ray installs): every error must
be one line naming the file, the YAML line and the key, with the fix ("'x' is a grid,
but search_alg optuna samples ...; use choice"). Pydantic reports a location path
without YAML lines, in a multi-line message, and most checks here are across keys
(a lookup against the values of its key, grace_period against epochs, the cells of a
model-based search), which would be custom validators anyway.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rest.errors import SpaceError
from rest.settings import SettingsError, TrainSettings
from rest.study.space_methods import Method, check_methods, expand
from rest.study.space_values import TRAIN_FIELDS, check_distribution, check_values
from rest.study.space_values import is_number as _is_number
from rest.study.space_yaml import key_lines, read_yaml

# SEARCH_DISTRIBUTIONS (rest.study.space_values): distribution name -> number of arguments. `lookup`
# ties one setting to another, as REST pairs lambda with the conflict ratio:
# {lookup: {key: conflict_pct, table: {0.5: 10, 1: 30, 2: 50, 5: 80}}}.


SCHEDULER_MODE_NAMES = ("deterministic", "async")  # rungs filled before they are cut | Ray's ASHA (rest/study/rungs.py)


@dataclass
class Scheduler:
    type: str = "asha"  # asha | none
    mode: str = "deterministic"
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_epochs: int | None = None  # default: the training epochs


@dataclass
class Confirm:
    top_k: int = 1
    seeds: list[int] = field(default_factory=lambda: [41, 42, 43])
    baseline: bool = True  # also run the dense ERM baseline of each cell with the confirm seeds
    epochs: int | None = None  # default: the training epochs


# search_alg.type -> how trials are proposed. grid and random use Ray Tune's variant
# generator (grid values enumerated, the rest sampled; `random` fixes its seed);
# optuna (TPE) and hyperopt (TPE) are model-based: one searcher per cell (see rest/study/search.py).
SEARCH_ALGS = {"grid": None, "random": None, "optuna": "optuna", "hyperopt": "hyperopt"}  # type -> package
MODEL_BASED_NAMES = ("optuna", "hyperopt")


@dataclass
class SearchAlg:
    type: str = "grid"
    seed: int | None = None  # sampler seed (each cell gets seed + its index)
    max_concurrent: int | None = None  # live trials per cell (model-based; default 1) or in all (grid, random)
    n_initial: int = 5  # model-based: random trials per cell before the model proposes

    @property
    def model_based(self) -> bool:
        return self.type in MODEL_BASED_NAMES


@dataclass
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass
class StudySpec:
    name: str
    train: TrainSettings  # fixed settings (searched keys hold their defaults here)
    search: dict[str, dict[str, Any]]  # key -> {distribution: args}
    num_samples: int = 1  # repeats of the space; with a model-based search_alg, trials per cell
    search_alg: SearchAlg = field(default_factory=SearchAlg)
    scheduler: Scheduler = field(default_factory=Scheduler)
    compare_within: list[str] = field(default_factory=lambda: ["dataset", "conflict_pct"])
    confirm: Confirm | None = field(default_factory=Confirm)
    resources: Resources = field(default_factory=Resources)
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    description: str = ""
    callbacks: list[str] = field(default_factory=list)  # trackers: tensorboard, mlflow, wandb
    methods: list[Method] = field(default_factory=list)  # a methods study: each method's own search per cell

    def method_keys(self) -> list[str]:
        """What tells a methods study's rows apart: the kind of method (density, reweighting,
        sparse method) and every setting some method searches; [] without methods."""
        if not self.methods:
            return []
        keys = ["density", "reweight", "sparse", *(k for m in self.methods for k in m.search)]
        return [k for k in dict.fromkeys(keys) if k not in self.compare_within and k != "seed"]

    @property
    def max_epochs(self) -> int:
        return self.scheduler.max_epochs or self.train.epochs

    def grid_size(self) -> int:
        """Trials of the search phase (grid entries multiply; sampled ones count num_samples)."""
        if self.methods:
            return len(method_configs(self))
        size = self.num_samples
        for dist in self.search.values():
            ((name, args),) = dist.items()
            if name == "grid":
                size *= len(args)
        return size

    def cells(self) -> list[dict[str, Any]]:
        """The cells' values of `compare_within` keys, for studies whose cells are grids or fixed."""
        options = []
        for key in self.compare_within:
            dist = self.search.get(key)
            options.append(list(dist["grid"]) if dist else [getattr(self.train, key)])
        return [dict(zip(self.compare_within, values)) for values in itertools.product(*options)]

    def searched_keys(self) -> list[str]:
        """Keys that tell configs of a cell apart (not the cells, not the seed), methods' own keys last."""
        shared = [k for k in self.search if k not in ("seed", *self.compare_within)]
        return shared + [k for k in self.method_keys() if k not in shared]

    def sampled_keys(self) -> list[str]:
        """Searched keys drawn from a continuous or integer range (not a grid, choice or lookup)."""
        return [
            k
            for k, d in self.search.items()
            if next(iter(d)) in ("uniform", "loguniform", "quniform", "randint", "qrandint")
        ]


TOP_LEVEL = {
    "name", "description", "dataset", "data_root", "model", "train", "search", "num_samples", "search_alg", "scheduler",
    "compare_within", "confirm", "resources", "checkpoint", "callbacks", "methods",
}  # fmt: skip


class _Checker:
    def __init__(self, lines: dict[str, int], source: str):
        self.lines = lines
        self.source = source

    def fail(self, key: str, problem: str) -> SpaceError:
        where = f"{self.source}:{self.lines[key]}" if key in self.lines else self.source
        return SpaceError(f"{where}: '{key}' {problem}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        if allowed is not None:
            for k in value:
                if k not in allowed:
                    raise self.fail(
                        f"{key}.{k}" if key else k, f"is not a known key; known: {', '.join(sorted(allowed))}"
                    )
        return value

    def number(self, value: Any, key: str, kind: type, low: float, high: float = float("inf")) -> Any:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not float(value).is_integer())
        ):
            raise self.fail(key, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"is {value}, outside [{low}, {high}]")
        return kind(value)


def parse_space(text: str, source: str = "<study>", frozen: bool = False) -> StudySpec:
    """Validate a study definition (YAML text); raises SpaceError naming the key and line.

    `frozen`: the definition of an existing study, accepted when it started. Checks added
    since (every value a search can reach, keys given twice) are not applied, so a study
    started before them can still be exported and resumed (its failed trials say why).
    """
    try:
        return _parse(text, source, frozen)
    except RecursionError:
        raise SpaceError(f"{source}: a YAML anchor refers to itself; write the values out instead") from None


def _parse(text: str, source: str, frozen: bool) -> StudySpec:
    node, raw = read_yaml(text, source, unique_keys=not frozen)
    c = _Checker(key_lines(node), source)
    raw = c.mapping(raw, "", TOP_LEVEL)

    train_values = dict(c.mapping(raw.get("train"), "train", TRAIN_FIELDS))
    for key in ("dataset", "data_root", "model"):
        if key in raw:
            if key in train_values:
                raise c.fail(key, f"is given both here and as train.{key}; keep one")
            train_values[key] = raw[key]
    search = c.mapping(raw.get("search"), "search", TRAIN_FIELDS)
    if not search and not raw.get("methods"):
        raise c.fail(
            "search", "is missing or empty; give at least one searched setting, e.g. density: {grid: [0.05, 1.0]}"
        )
    for key, dist in search.items():
        check_distribution(c, f"search.{key}", dist)
        if key in train_values:
            raise c.fail(f"search.{key}", "is also fixed under train; keep it in one place")
    for key, dist in search.items():  # a lookup must cover every value its key can take: checked now, not mid-study
        ((name, args),) = dist.items()
        if name != "lookup":
            continue
        source_dist = search.get(args["key"], {})
        if source_dist and next(iter(source_dist)) not in ("grid", "choice"):
            raise c.fail(
                f"search.{key}",
                f"looks up {args['key']}, which is drawn from a {next(iter(source_dist))}; "
                f"a lookup needs its key listed with grid or choice",
            )
        values = (
            source_dist.get("grid")
            or source_dist.get("choice")
            or ([] if source_dist else [train_values.get(args["key"], getattr(TrainSettings(), args["key"]))])
        )
        table = {float(k) if _is_number(k) else k for k in args["table"]}
        missing = [v for v in values if (float(v) if _is_number(v) else v) not in table]
        if missing:
            raise c.fail(
                f"search.{key}",
                f"lookup on {args['key']} has no entry for {', '.join(map(str, missing))}; "
                f"add {'it' if len(missing) == 1 else 'them'} to the table",
            )
    base = _fixed_settings(c, train_values, raw)
    if not frozen:
        check_values(c, train_values, search)  # every value a trial can draw is valid: refused now, not mid-study

    scheduler = Scheduler(
        **c.mapping(raw.get("scheduler"), "scheduler", {f.name for f in dataclasses.fields(Scheduler)})
    )
    if scheduler.type not in ("asha", "none"):
        raise c.fail("scheduler.type", f"is '{scheduler.type}'; choose from asha, none")
    if scheduler.mode not in SCHEDULER_MODE_NAMES:
        raise c.fail("scheduler.mode", f"is '{scheduler.mode}'; choose from {', '.join(SCHEDULER_MODE_NAMES)}")
    c.number(scheduler.grace_period, "scheduler.grace_period", int, 1)
    c.number(scheduler.reduction_factor, "scheduler.reduction_factor", float, 1.01)
    if scheduler.max_epochs is not None:
        c.number(scheduler.max_epochs, "scheduler.max_epochs", int, scheduler.grace_period, base.epochs)
    elif scheduler.type == "asha" and scheduler.grace_period > base.epochs:
        raise c.fail(
            "scheduler.grace_period",
            f"is {scheduler.grace_period}, more than the {base.epochs} training epochs; "
            f"lower it or set scheduler.type: none",
        )

    compare = raw.get("compare_within", ["dataset", "conflict_pct"])
    if not isinstance(compare, list) or any(not isinstance(k, str) or k not in TRAIN_FIELDS for k in compare):
        raise c.fail(
            "compare_within", f"must be a list of training settings, e.g. [dataset, conflict_pct]; got {compare!r}"
        )
    if len(set(compare)) != len(compare):
        raise c.fail("compare_within", f"lists a setting twice ({compare!r}); give each once")

    confirm: Confirm | None = None
    if raw.get("confirm", {}) is not None and raw.get("confirm") is not False:
        conf = c.mapping(raw.get("confirm"), "confirm", {f.name for f in dataclasses.fields(Confirm)})
        confirm = Confirm(**conf)
        _check_confirm(c, confirm)

    res = c.mapping(raw.get("resources"), "resources", {f.name for f in dataclasses.fields(Resources)})
    resources = Resources(**res)
    c.number(resources.cpus_per_trial, "resources.cpus_per_trial", float, 0.01)
    c.number(resources.gpus_per_trial, "resources.gpus_per_trial", float, 0.0)

    ckpt = c.mapping(raw.get("checkpoint"), "checkpoint", {"every", "keep"})
    every = c.number(ckpt.get("every", 1), "checkpoint.every", int, 1)
    keep = c.number(ckpt.get("keep", 2), "checkpoint.keep", int, 1)

    methods = check_methods(c, raw.get("methods"), train_values, search, list(compare))
    if methods and int(raw.get("num_samples", 1)) != 1:
        raise c.fail(
            "num_samples", "must be 1 in a methods study (its grids are expanded once); repeat with seeds instead"
        )
    if methods and raw.get("search_alg") is not None:
        raise c.fail(
            "search_alg",
            "cannot be combined with methods (a methods study expands every method's grid "
            "itself); remove search_alg or run each method as its own study",
        )
    search_alg = _search_alg(c, raw.get("search_alg"), search, list(compare))
    if scheduler.type == "asha" and scheduler.mode == "deterministic" and not search_alg.model_based:
        _check_rungs_fill(c, search_alg, search, list(compare))
    return StudySpec(
        methods=methods,
        name=str(raw.get("name") or Path(source).stem),
        description=str(raw.get("description", "")),
        train=base,
        search=search,
        num_samples=_num_samples(c, raw.get("num_samples", 1), search),
        search_alg=search_alg,
        scheduler=scheduler,
        compare_within=list(compare),
        confirm=confirm,
        resources=resources,
        checkpoint_every=every,
        keep_checkpoints=keep,
        callbacks=_callbacks(c, raw.get("callbacks", [])),
    )


def _check_confirm(c: _Checker, confirm: Confirm) -> None:
    c.number(confirm.top_k, "confirm.top_k", int, 1)
    seeds = confirm.seeds
    if not isinstance(seeds, list) or not seeds or not all(_is_number(s) and isinstance(s, int) for s in seeds):
        raise c.fail("confirm.seeds", f"must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise c.fail("confirm.seeds", f"lists a seed twice ({seeds!r}); each seed is one more run of a config")
    for seed in seeds:
        if not _valid({"seed": seed}):
            raise c.fail("confirm.seeds", f"holds {seed}, not a valid seed; use integers such as 41, 42, 43")
    if not isinstance(confirm.baseline, bool):
        raise c.fail("confirm.baseline", f"must be true or false, got {confirm.baseline!r}")
    if confirm.epochs is not None:
        c.number(confirm.epochs, "confirm.epochs", int, 1)


def _fixed_settings(c: _Checker, values: dict[str, Any], raw: dict) -> TrainSettings:
    """The fixed training settings, valid; an invalid one is named (train.<key>, or <key> given at the top)."""
    try:
        return TrainSettings.from_dict(values).validate()
    except SettingsError as exc:
        culprit = next((k for k, v in values.items() if not _valid({k: v})), None)
        if culprit is None:  # a rule across several fixed settings
            raise SpaceError(f"{c.source}: {exc}") from None
        raise c.fail(culprit if culprit in raw else f"train.{culprit}", f"is invalid: {exc}") from None


def _valid(values: dict[str, Any]) -> bool:
    try:
        TrainSettings.from_dict(values).validate()
        return True
    except SettingsError:
        return False


def method_configs(spec: StudySpec, epochs: int | None = None) -> list[dict[str, Any]]:
    """The trials of a methods study's search phase: per cell (the shared search), every
    method's own grid over its fixed settings; each config says its method in extra.method."""
    base = spec.train.replace(epochs=epochs or spec.max_epochs).to_dict()
    configs = []
    for shared in expand(base, spec.search):
        for m in spec.methods:
            for config in expand({**shared, **m.train}, m.search):
                configs.append({**config, "extra": {"method": m.name}})
    return configs


def _num_samples(c: _Checker, value: Any, search: dict) -> int:
    """Repeats of the space; refused where every repeat would be the same trials (grid-only, fixed seed)."""
    n = c.number(value, "num_samples", int, 1)
    sampled = any(name not in ("grid", "lookup") for dist in search.values() for name in dist)
    if n > 1 and not sampled and "seed" not in search:
        raise c.fail(
            "num_samples",
            f"is {n} but the space has only grid values and a fixed seed, so every repeat "
            f"trains the same trials; set num_samples: 1, or search seed: {{grid: [...]}}",
        )
    return c.number(n, "num_samples", int, 1, 100_000)


def _search_alg(c: _Checker, value: Any, search: dict, cells: list[str]) -> SearchAlg:
    raw = c.mapping(value, "search_alg", {f.name for f in dataclasses.fields(SearchAlg)})
    alg = SearchAlg(**raw)
    if alg.type not in SEARCH_ALGS:
        raise c.fail("search_alg.type", f"is '{alg.type}'; choose from {', '.join(SEARCH_ALGS)}")
    if alg.seed is not None:
        c.number(alg.seed, "search_alg.seed", int, 0, 2**31 - 1)
    if alg.max_concurrent is not None:
        c.number(alg.max_concurrent, "search_alg.max_concurrent", int, 1)
    c.number(alg.n_initial, "search_alg.n_initial", int, 1)
    package = SEARCH_ALGS[alg.type]
    if package:
        import importlib.util  # cheap: finds the package without importing it

        if importlib.util.find_spec(package) is None:
            raise c.fail("search_alg.type", f"'{alg.type}' needs the {package} package; pip install {package}")
    if alg.type == "grid" and alg.seed is not None:
        raise c.fail("search_alg.seed", "has no effect on type grid; use type: random for seeded sampling")
    if not alg.model_based:
        return alg
    # A model-based searcher proposes points of one space; each cell (compare_within) gets its own.
    for key, dist in search.items():
        ((name, args),) = dist.items()
        if key in cells:
            if name != "grid":
                raise c.fail(
                    f"search.{key}",
                    f"is a cell key (compare_within) and must be a grid with search_alg {alg.type}, got {name}",
                )
        elif name == "grid":
            raise c.fail(
                f"search.{key}",
                f"is a grid, but search_alg {alg.type} samples every key outside the cells "
                f"({', '.join(cells)}); use choice: {args!r} or add {key} to compare_within",
            )
        elif name == "lookup" and args["key"] not in cells:
            raise c.fail(
                f"search.{key}",
                f"looks up {args['key']}, which search_alg {alg.type} samples; "
                f"a lookup with a model-based search_alg may only read a cell key ({', '.join(cells)})",
            )
    if all(k in cells or next(iter(d)) == "lookup" for k, d in search.items()):
        raise c.fail(
            "search",
            f"has nothing for search_alg {alg.type} to sample outside the cells; "
            f"add e.g. density: {{loguniform: [0.01, 1.0]}}",
        )
    return alg


def _check_rungs_fill(c: _Checker, alg: SearchAlg, search: dict, cells: list[str]) -> None:
    """Deterministic halving cuts a rung when the whole cell reached it: cell sizes known, live trials uncapped."""
    if alg.max_concurrent is not None:
        raise c.fail(
            "search_alg.max_concurrent",
            "counts trials paused at a rung as live, so a deterministic rung could "
            "never fill; pass --max-concurrent instead, or set scheduler.mode: async",
        )
    for key in (k for k in cells if k in search and next(iter(search[k])) != "grid"):
        raise c.fail(
            f"search.{key}",
            "is a cell key and deterministic halving needs cell sizes in advance; make it a "
            "grid, or set scheduler.mode: async",
        )


# Experiment trackers a study can log to (Ray Tune's own logger callbacks; see tracking.CALLBACKS).
CALLBACK_NAMES = ("tensorboard", "mlflow", "wandb")


def _callbacks(c: _Checker, value: Any) -> list[str]:
    if not isinstance(value, list) or any(v not in CALLBACK_NAMES for v in value):
        raise c.fail("callbacks", f"must be a list of trackers from {', '.join(CALLBACK_NAMES)}; got {value!r}")
    return list(dict.fromkeys(value))


def load_space(path: str | os.PathLike) -> tuple[StudySpec, str]:
    """(spec, original YAML text) of a study file."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"study file {p} does not exist; see search_spaces/ for examples")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise SpaceError(f"study file {p} is not a text (YAML) file; pass a .yaml study definition") from None
    return parse_space(text, str(p)), text
