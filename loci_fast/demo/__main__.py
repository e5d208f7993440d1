"""``python -m loci_fast.demo``."""
import sys

from .cli import main

sys.exit(main())
