"""``python -m jebm ...`` is the ``jebm`` command."""
import sys

from .cli import main

sys.exit(main())
