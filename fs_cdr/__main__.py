"""``python -m fs_cdr ...`` is the ``fs-cdr`` command."""

import sys

from .cli import main

sys.exit(main())
