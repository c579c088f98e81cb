"""The error every hloscope command turns into one line on stderr and exit code 2."""


class UserError(Exception):
    """A mistake in the command line or its inputs: one line, exit code 2, nothing written."""
