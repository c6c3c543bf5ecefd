"""`python -m fastdia.cli ...` runs the `fastdia` command."""

import sys

from .main import main

sys.exit(main())
