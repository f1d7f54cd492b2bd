"""Training settings: defaults keep today's behaviour; impossible values name the fix."""

import pytest

from rest.settings import SettingsError, TrainSettings


def test_defaults_keep_the_previous_behaviour():
    s = TrainSettings().validate()
    assert (s.stem, s.plateau_patience, s.drop_rate_min, s.precision, s.selection) == (
        "auto",
        10,
        0.0,
        "auto",
        "worst_group",
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stem": "tiny"}, "unknown stem 'tiny'; choose from auto, imagenet, cifar"),
        ({"precision": "fp8"}, "unknown precision 'fp8'; choose from auto, fp32, bf16, fp16"),
        ({"selection": "best"}, "unknown selection 'best'; choose from worst_group, average"),
        ({"memory_format": "nhwc"}, "unknown memory_format 'nhwc'; choose from auto, channels_last, contiguous"),
        (
            {"data_device_fraction": 1.5},
            "data_device_fraction 1.5 is outside [0, 1]; use 0.25 (the default) or 0 to always stream",
        ),
        ({"plateau_patience": -1}, "plateau_patience -1 is negative"),
        ({"drop_rate_min": -0.1}, "drop_rate_min -0.1 is negative"),
        (
            {"density": 0.1, "drop_rate": 0.3, "drop_rate_min": 0.3},
            "drop_rate_min 0.3 is not below drop_rate 0.3; lower drop_rate_min",
        ),
    ],
)
def test_impossible_values_are_one_line_errors_naming_the_fix(change, message):
    with pytest.raises(SettingsError) as err:
        TrainSettings(**change).validate()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        {"density": 1.0, "drop_rate": 0.3, "drop_rate_min": 0.5},  # dense: no masks to update
        {"density": 0.1, "sparse": "static", "drop_rate_min": 0.9},  # static masks never move
        {"density": 0.1, "drop_rate": 0.0, "drop_rate_min": 0.0},  # no updates at all, as before
        {
            "density": 0.1,
            "drop_rate": 0.5,
            "drop_rate_min": 0.005,
            "t_end": 1.0,
            "plateau_patience": 5,
            "stem": "imagenet",
            "precision": "fp32",
            "selection": "average",
        },  # REST's protocol
    ],
)
def test_possible_values_pass(change):
    TrainSettings(**change).validate()


def test_search_spaces_coerce_the_new_fields():
    s = TrainSettings.from_dict({"plateau_patience": 5.0, "drop_rate_min": 0, "precision": "fp16"})
    assert s.plateau_patience == 5 and isinstance(s.plateau_patience, int)
    assert s.drop_rate_min == 0.0 and isinstance(s.drop_rate_min, float)


def test_a_study_s_bookkeeping_is_not_a_setting():
    """A trial config's ``extra`` (role, method, position), and the empty one that checkpoints, model files
    and ``train --out`` settings.json written before it left the settings carry, is dropped, not an error."""
    config = {"dataset": "colored_digits", "density": 0.1, "extra": {"role": "top1", "method": "PGD"}}
    assert TrainSettings.from_dict(config) == TrainSettings(density=0.1)
    assert "extra" not in TrainSettings().to_dict()
    with pytest.raises(SettingsError, match="unknown training setting"):
        TrainSettings.from_dict({"extras": {}})
