"""``python -m efyolo ...`` (also what ``torchrun -m efyolo train ...`` runs)."""

import sys

from efyolo.cli import main

sys.exit(main())
