"""Ray's experiment files, read with Ray's own reader: the report layer's one door into Ray.

``ray.tune.ExperimentAnalysis`` (imported inside the functions, so importing the report
layer costs no Ray) gives each trial of a phase: status, config, failure count. Two of its
private methods are used, and ``tests/test_tune_ext.py`` checks them against the installed
Ray: ``_fetch_trial_dataframes`` (overridden so that building it reads no trial's records)
and ``_fetch_trial_dataframe`` (one trial's records, for studies without history files).
Nothing else of Ray is imported by ``rest.report``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def experiment_analysis(path: str, fs):
    """Ray's ``ExperimentAnalysis`` of an experiment (its trials: status, config, failures) without
    reading every trial's reported records.

    Its constructor reads each trial's ``result.json``, one trial after another; the study
    reader reads each trial's own history file instead, in parallel, and asks for Ray's
    records (``reported_frame``) only of trials that have none (studies from before it).
    """
    from ray.tune import ExperimentAnalysis

    class TrialsOnly(ExperimentAnalysis):
        def _fetch_trial_dataframes(self) -> dict:
            return {}

    return TrialsOnly(path, storage_filesystem=fs)


def reported_frame(analysis, trial):
    """Every record `trial` reported to Ray (its ``result.json``) as a DataFrame; empty if there is none."""
    import pandas as pd

    try:
        return analysis._fetch_trial_dataframe(trial)
    except FileNotFoundError:  # it reported nothing yet, or its files are gone
        return pd.DataFrame()
    except Exception as exc:  # noqa: BLE001 - a damaged result.json: its checkpoint's history stands in
        log.warning("cannot read the records trial %s reported (%s)", trial.trial_id, exc)
        return pd.DataFrame()
