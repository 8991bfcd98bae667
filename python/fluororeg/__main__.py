"""``python -m fluororeg``: the same as the ``fluororeg`` command."""

import sys

from fluororeg.cli.app import main

sys.exit(main())
