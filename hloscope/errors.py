"""The error every hloscope command turns into one line on stderr and exit code 2."""

import argparse


class UserError(Exception):
    """A mistake in the command line or its inputs: one line, exit code 2, nothing written."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2 like every other UserError (argparse's
    own prints the usage block first). reftrain keeps its own copy: neither package imports the
    other (DESIGN.md)."""

    def error(self, message: str):
        self.exit(2, f"hloscope: error: {message} (see --help)\n")
