"""``python -m kgnnls`` (also what ``torchrun -m kgnnls`` runs)."""

import sys

from kgnnls.cli import main

sys.exit(main())
