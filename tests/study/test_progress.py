"""The console's progress line: counts, time left and how often a log shows it (pure functions, no Ray)."""

from rest.study.progress import Every, PhaseProgress, count_trials, describe, epochs_left, eta_seconds


def test_counts_take_trials_not_created_yet_as_pending():
    assert count_trials(["TERMINATED", "ERROR", "RUNNING", "PENDING"], total=8) == (2, 1, 5, 1)
    assert count_trials(["RUNNING", "RUNNING"], total=0) == (0, 2, 0, 0), "a phase without a known total"


def test_time_left_counts_unfinished_epochs_of_every_trial_over_the_slots():
    left = epochs_left([("TERMINATED", 1, 4), ("RUNNING", 1, 4), ("PENDING", 0, 2)], unseen=2, planned=4)
    assert left == 3 + 2 + 8, "a trial stopped early owes nothing; unseen trials owe their planned epochs"
    assert eta_seconds(left, 2.0, 2) == 13.0
    assert eta_seconds(left, None, 2) is None and eta_seconds(left, 2.0, 0) is None


def test_the_line_says_done_running_pending_best_and_eta():
    p = PhaseProgress("search", 3, 2, 3, 1, 0.725, "val worst-group", 80.0)
    assert describe(p) == "search: 3/8 done, 2 running, 3 pending, 1 failed, best val worst-group 72.5%, ETA 1m20s"
    end = PhaseProgress("confirm", 6, 0, 0, 0, None, "val avg", None)
    assert describe(end) == "confirm: 6/6 done, 0 running, 0 pending, finished"


def test_a_log_gets_a_line_at_most_every_interval_and_always_a_phase_first_and_last():
    now, shown = [0.0], []
    every = Every(shown.append, seconds=10, clock=lambda: now[0])
    for t, done, phase in [
        (0, 0, "search"),
        (1, 1, "search"),
        (11, 2, "search"),
        (12, 2, "search"),
        (13, 4, "search"),
        (13.5, 0, "confirm"),
    ]:
        now[0] = t
        every(PhaseProgress(phase, done, 4 - done, 0, 0, None, "val worst-group", None))
    assert [line.split(" done")[0] for line in shown] == ["search: 0/4", "search: 2/4", "search: 4/4", "confirm: 0/4"]
