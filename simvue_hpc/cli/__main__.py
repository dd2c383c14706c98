"""``python -m simvue_hpc.cli``: the same as the ``simvue-hpc`` script."""

import sys

from . import main

sys.exit(main())
