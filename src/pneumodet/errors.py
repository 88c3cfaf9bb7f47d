"""The error a user can fix: the CLI prints its one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, credentials); the message says what to do."""


def is_expected_failure(exc: BaseException) -> bool:
    """Return whether ``exc`` is a known failure that deserves one line, not a traceback (exit code 1)."""
    return type(exc).__name__ in {"TrainingDiverged"}
