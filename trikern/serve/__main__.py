"""`python -m trikern.serve ...` is `trikern serve ...`."""
import sys

from . import main

sys.exit(main())
