"""Errors a user can fix. The command line prints their message on one line, exit 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""

    exit_status = 2


class SpaceError(UserError):
    """A study file is invalid; the message names the key (and line). (rest.study.space re-exports it.)"""


class StudyError(UserError):
    """A study cannot be created, opened, continued or read as asked."""


class TrialsFailed(StudyError):
    """Trials of a study phase ended in errors after their retries: the phase is failed, not done.

    The message names the trials, the first line of each error and the fix (resume
    after fixing the cause). The command line exits with ``exit_status``.
    """

    exit_status = 3
