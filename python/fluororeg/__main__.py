"""``python -m fluororeg``: the same as the ``fluororeg`` command."""

import sys

from fluororeg.cli import main

sys.exit(main())
