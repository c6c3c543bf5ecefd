"""`python -m fastdia ...` runs the `fastdia` command."""

import sys

from .cli import main

sys.exit(main())
