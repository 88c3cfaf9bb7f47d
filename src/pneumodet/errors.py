"""The error a user can fix: the CLI prints its one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, credentials); the message says what to do."""
