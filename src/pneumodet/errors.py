"""Errors the CLI turns into one line: UserError (the user can fix it, exit 2) and RunFailure (exit 1)."""


class UserError(Exception):
    """A problem with the user's input (file, option, credentials); the message says what to do."""


class RunFailure(RuntimeError):
    """A known way for a run to fail (e.g. training diverged): one line on stderr, exit code 1."""
