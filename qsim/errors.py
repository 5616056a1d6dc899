"""The one error type the CLI turns into a single line and exit status 2."""


class QsimError(Exception):
    """Bad input or an impossible request; the message names what and where."""
