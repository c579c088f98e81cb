"""The command lines' argument parser: a usage error is one line on stderr and exit 2, like
every other user error of reftrain's commands (argparse's own adds the usage block)."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")
