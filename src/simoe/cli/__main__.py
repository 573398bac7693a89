"""`python -m simoe.cli ...` (what `accelerate launch -m simoe.cli` runs)."""

import sys

from . import main

sys.exit(main())
