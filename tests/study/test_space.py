"""Study definitions: every shipped file is valid; bad ones name the key and line."""

import pytest

from conftest import ROOT
from rest.study.space import SpaceError, load_space, parse_space

SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_study_files_are_valid(path):
    spec, _ = load_space(path)
    assert spec.search and spec.grid_size() >= 1


@pytest.mark.parametrize("name, ratios", [("rest_cmnist", 4), ("rest_cifar10c", 4), ("rest_bffhq", 1)])
def test_paper_studies_reproduce_the_rest_grid(name, ratios):
    spec, _ = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert len(spec.search["density"]["grid"]) == 14
    assert spec.search["seed"]["grid"] == [41, 42, 43] and spec.train.epochs == 100
    table = spec.search["lambda_upweight"]["lookup"]["table"]
    rest_table = {0.5: 80} if name == "rest_bffhq" else {0.5: 10, 1: 30, 2: 50, 5: 80}  # REST's scripts
    assert table == rest_table and len(table) == ratios
    assert spec.grid_size() == 14 * 3 * ratios
    assert spec.train.lr == (0.01 if name == "rest_cmnist" else 0.001)


def test_default_study_covers_density_lambda_and_two_ratios():
    spec, _ = load_space(ROOT / "search_spaces" / "default.yaml")
    assert {"density", "lambda_upweight", "conflict_pct"} <= set(spec.search)
    assert len(spec.search["conflict_pct"]["grid"]) >= 2
    assert spec.train.dataset == "colored_digits"


@pytest.mark.parametrize(
    "text, message",
    [
        ("search: {density: {grid: [0.1]}}\nepochs: 3\n", "<study>:2: 'epochs' is not a known key"),
        ("search: {density: {grid: [0.1]}}\ntrain:\n  epoch: 3\n", "<study>:3: 'train.epoch' is not a known key"),
        ("search: {density: {grid: [0.1]}}\ntrain: {epochs: three}\n", "setting epochs must be int"),
        ("search: {density: {grid: [0, 0.1]}}\n", "density 0.0 is outside (0, 1]"),
        ("search: {density: {normal: [0, 1]}}\n", "uses unknown distribution 'normal'; choose from grid, choice"),
        ("search: {density: {uniform: [0.5]}}\n", "uniform needs a list of 2 numbers"),
        ("search: {density: {loguniform: [0, 1]}}\n", "loguniform needs a positive lower bound"),
        (
            "search: {lr: {grid: [0.1]}}\nscheduler: {type: hyperband}\n",
            "'scheduler.type' is 'hyperband'; choose from asha, none",
        ),
        ("search: {lr: {grid: [0.1]}}\nscheduler: {grace_period: 0}\n", "'scheduler.grace_period' is 0, outside"),
        (
            "search: {lr: {grid: [0.1]}}\nscheduler: {mode: sync}\n",
            "'scheduler.mode' is 'sync'; choose from deterministic, async",
        ),
        ("search: {lr: {grid: [0.1]}}\nsearch_alg: {max_concurrent: 2}\n", "a deterministic rung could never fill"),
        (
            "search: {lr: {grid: [0.1]}, conflict_pct: {choice: [1, 5]}}\nsearch_alg: {type: random}\n",
            "'search.conflict_pct' is a cell key and deterministic halving needs cell sizes",
        ),
        ("search: {lr: {grid: [0.1]}}\nconfirm: {seeds: []}\n", "'confirm.seeds' must be a non-empty list"),
        (
            "search: {lr: {grid: [0.1]}}\ncompare_within: [colour]\n",
            "'compare_within' must be a list of training settings",
        ),
        ("search: {lr: {grid: [0.1]}}\nresources: {gpus_per_trial: -1}\n", "'resources.gpus_per_trial' is -1"),
        ("search: {}\n", "'search' is missing or empty"),
        ("search: {dataset: {grid: [imagenet]}}\n", "unknown dataset 'imagenet'"),
        ("search: {density: {grid: [0.1]}}\ntrain: {density: 0.5}\n", "'search.density' is also fixed under train"),
        ("search: [density]\n", "'search' must be a mapping"),
        ("search: {density: {grid: [0.1]}\n", "<study>:2: not valid YAML"),
    ],
)
def test_bad_study_files_name_the_key(text, message):
    with pytest.raises(SpaceError) as err:
        parse_space(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [  # every value a trial can draw must be valid: refused before anything starts, naming the key
        (
            "search:\n  density: {loguniform: [0.5, 4.0]}\n",
            "<study>:2: 'search.density' loguniform [0.5, 4.0] reaches 4: density 4.0 is outside (0, 1]",
        ),
        (
            "search:\n  density: {uniform: [0, 0.5]}\n",
            "'search.density' uniform [0, 0.5] reaches 0: density 0.0 is outside",
        ),
        (
            "search:\n  lambda_upweight: {uniform: [0.5, 10]}\n",
            "'search.lambda_upweight' uniform [0.5, 10] reaches 0.5: lambda_upweight 0.5 is below 1",
        ),
        ("search:\n  epochs: {randint: [0, 4]}\n", "'search.epochs' randint [0, 4] reaches 0: epochs 0 is below 1"),
        (
            "search:\n  width: {qrandint: [0, 64, 8]}\n",
            "'search.width' qrandint [0, 64, 8] reaches 0: width 0 is below 1",
        ),
        ("search:\n  density: {quniform: [0.05, 1.0, 0.1]}\n", "'search.density' quniform [0.05, 1.0, 0.1] reaches 0:"),
        (
            "search:\n  t_end: {uniform: [0.5, 1.5]}\n",
            "'search.t_end' uniform [0.5, 1.5] reaches 1.5: t_end 1.5 is outside (0, 1]",
        ),
        ("search:\n  density: {quniform: [0.31, 0.39, 0.1]}\n", "has no multiple of q=0.1 between 0.31 and 0.39"),
        ("search:\n  lr: {grid: [0.1, -0.1]}\n", "'search.lr' grid value -0.1: lr -0.1 must be positive"),
        (
            "search:\n  epochs: {uniform: [1, 5]}\n",
            "'search.epochs' uses uniform, which draws fractions, but epochs is an integer",
        ),
        (
            "search:\n  dataset: {uniform: [0, 1]}\n",
            "'search.dataset' uses uniform, a range of numbers, but dataset is text",
        ),
        ("search:\n  density: {grid: [0.05, 0.05]}\n", "'search.density' grid lists 0.05 twice"),
        ("search:\n  density: {grid: [true]}\n", "setting density must be float, got True"),
        ("search:\n  density: {grid: ['0.5']}\n", "setting density must be float, got '0.5'"),
        (
            "search:\n  drop_rate: {grid: [0.1, 0.5]}\n  drop_rate_min: {grid: [0.0, 0.2]}\n  density: {grid: [0.1]}\n",
            "'search' reaches the combination drop_rate 0.1, drop_rate_min 0.2, density 0.1, which is invalid: "
            "drop_rate_min 0.2 is not below",
        ),
        (
            "search:\n  lambda_upweight: {lookup: {key: conflict_pct, table: {1: 0.5}}}\n  conflict_pct: {grid: [1]}\n",
            "'search.lambda_upweight' lookup value 0.5: lambda_upweight 0.5 is below 1",
        ),
        (
            "search:\n  lambda_upweight: {lookup: {key: conflict_pct, table: {1: 10}}}\n"
            "  conflict_pct: {uniform: [1, 2]}\n",
            "looks up conflict_pct, which is drawn from a uniform; a lookup needs its key listed with grid or choice",
        ),
        (
            "train: {density: 4}\nsearch: {lr: {grid: [0.1]}}\n",
            "<study>:1: 'train.density' is invalid: density 4.0 is outside",
        ),
        (
            "dataset: cmnist\ntrain: {dataset: cmnist}\nsearch: {lr: {grid: [0.1]}}\n",
            "'dataset' is given both here and as train.dataset",
        ),
        ("search: {lr: {grid: [0.1]}}\nconfirm: {seeds: [41, 41]}\n", "'confirm.seeds' lists a seed twice"),
        (
            "search: {lr: {grid: [0.1]}}\nconfirm: {seeds: [true]}\n",
            "'confirm.seeds' must be a non-empty list of integers",
        ),
        ("search: {lr: {grid: [0.1]}}\nconfirm: {baseline: 'yes'}\n", "'confirm.baseline' must be true or false"),
        ("search: {lr: {grid: [0.1]}}\ncompare_within: [dataset, dataset]\n", "'compare_within' lists a setting twice"),
        # a key given twice would silently replace the first, at any depth
        (
            "train:\n  epochs: 2\n  batch_size: 128\n  epochs: 3\nsearch: {lr: {grid: [0.1]}}\n",
            "<study>:4: 'train.epochs' is given twice (first on line 2)",
        ),
        (
            "train: {subsample: 200}\nsearch: {lr: {grid: [0.1]}}\ntrain: {subsample: 0}\n",
            "<study>:3: 'train' is given twice (first on line 1)",
        ),
        (
            "search:\n  lambda_upweight: {lookup: {key: conflict_pct, table: {1: 10, 1.0: 20}}}\n"
            "  conflict_pct: {grid: [1]}\n",
            "'search.lambda_upweight.lookup.table.1.0' is given twice",
        ),
    ],
)
def test_values_a_trial_could_not_run_are_refused_naming_the_key(text, message):
    with pytest.raises(SpaceError) as err:
        parse_space(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text",
    [  # what the checks must still accept
        "search:\n  density: {quniform: [0.05, 1.0, 0.05]}\n  lr: {loguniform: [0.001, 0.1]}\n",
        "search:\n  epochs: {randint: [1, 5]}\n  width: {qrandint: [8, 64, 8]}\n  seed: {randint: [0, 1000]}\n",
        "train: {<<: {epochs: 2}, epochs: 3}\nsearch: {lr: {grid: [0.1]}}\n",  # a merge key may be overridden
        "search:\n  drop_rate: {uniform: [0.3, 0.6]}\n  drop_rate_min: {grid: [0.0, 0.1]}\n",
    ],
)
def test_valid_ranges_and_merge_keys_are_accepted(text):
    assert parse_space(text).search


def test_bad_study_file_through_the_cli(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  density: {grid: [0.1]}\nscheduler:\n  grace: 2\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tune_search.py"), "run", str(bad), "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    known = "grace_period, max_epochs, mode, reduction_factor, type"
    assert out.stderr.strip() == f"error: {bad}:4: 'scheduler.grace' is not a known key; known: {known}"
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name", ["rest_cmnist", "rest_cifar10c", "rest_bffhq"])
def test_paper_studies_train_on_a_tiny_tree(tmp_path, name):
    """Smoke variant of each paper study: its settings (first grid value of every searched
    key, lambda from its lookup) train one epoch on a tiny LfF tree of its dataset."""
    import math

    from conftest import write_png_tree
    from rest.core.train import train

    spec, _ = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    values = {k: d["grid"][0] for k, d in spec.search.items() if "grid" in d}
    lookup = spec.search["lambda_upweight"]["lookup"]
    values["lambda_upweight"] = lookup["table"][values[lookup["key"]]]
    classes = 2 if spec.train.dataset == "bffhq" else 10
    write_png_tree(
        tmp_path,
        {"align": 3, "conflict": 1, "valid": 1, "test": 1},
        pct=f"{values['conflict_pct']:g}pct",
        classes=classes,
    )
    settings = spec.train.replace(**values, data_root=str(tmp_path), epochs=1, width=4, batch_size=16)
    (record,) = train(settings.validate())
    assert math.isfinite(record["train_loss"]) and record["density"] < 0.05  # tiny layers keep >= 1 weight each


def test_an_existing_studys_definition_is_read_as_it_was_accepted():
    """A study started before the reach and duplicate-key checks can still be exported and resumed."""
    text = "train: {epochs: 2}\nsearch:\n  density: {loguniform: [0.5, 4.0]}\ntrain: {epochs: 3}\n"
    with pytest.raises(SpaceError, match="'train' is given twice"):
        parse_space(text)
    spec = parse_space(text, frozen=True)
    assert spec.train.epochs == 3 and spec.search["density"] == {"loguniform": [0.5, 4.0]}
