"""`python -m fastdia ...` runs the `fastdia` command."""

import sys

from .cli.main import main

sys.exit(main())
