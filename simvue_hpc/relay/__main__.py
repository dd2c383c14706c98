"""``python -m simvue_hpc.relay``: run one node relay (see service.py)."""

import sys

from .service import main

sys.exit(main())
