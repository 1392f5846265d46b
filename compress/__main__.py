"""``python -m compress``: the command line, as torchrun starts it (``torchrun --nproc-per-node N -m compress run``)."""

import sys

from compress.cli import main

sys.exit(main())
