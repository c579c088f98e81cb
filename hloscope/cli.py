"""The `hloscope` command line."""

from __future__ import annotations

import argparse
import sys

from hloscope.versions import toolchain_versions


def _versions(_: argparse.Namespace) -> int:
    for name, version in toolchain_versions().items():
        print(f"{name:<24} {version or 'not installed'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the process exit code (2 for a user error)."""
    parser = argparse.ArgumentParser(prog="hloscope", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("versions", help="print the jax/XLA toolchain versions that memory figures depend on").set_defaults(run=_versions)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
