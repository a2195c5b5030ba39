"""``python -m nnzoo.pipeline ...`` (e.g. under ``torchrun -m nnzoo.pipeline train ...``): the ``nnzoo`` command."""

import sys

from .cli import main

sys.exit(main())
