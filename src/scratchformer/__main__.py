"""`python -m scratchformer ...` runs the command line, as the `scratchformer` script does."""

import sys

from .cli import main

sys.exit(main())
