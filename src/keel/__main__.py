"""`python -m keel ...`: the `keel` command (keel.cli), for when the script is not on PATH."""

import sys

from keel.cli import main

sys.exit(main())
