"""`python -m trikern` = the `trikern` command."""
import sys

from .cli import main

sys.exit(main())
