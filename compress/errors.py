"""The one error type compress raises for problems a user can fix."""


class CompressError(Exception):
    """Something the user can fix: the message says what is wrong and what to do.

    The CLI prints the message on one line and exits with status 2. Any other
    exception reaching the CLI is a bug in compress.
    """
