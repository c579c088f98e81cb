"""`python -m hloscope` is the `hloscope` command."""

import sys

from hloscope.cli import main

sys.exit(main())
