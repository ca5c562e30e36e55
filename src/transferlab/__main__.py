"""`python -m transferlab` entry point."""

import sys

from transferlab.cli import main

sys.exit(main())
