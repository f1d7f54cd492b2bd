"""Errors a user can fix. The command line prints their message on one line, exit 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class StudyError(UserError):
    """A study cannot be created, opened, continued or read as asked."""
