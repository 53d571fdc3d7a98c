"""``python -m fusionrec ...`` is the ``fusionrec`` console script."""

import sys

from fusionrec.cli import main

sys.exit(main())
