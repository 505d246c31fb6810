"""``python -m storyloom``: the ``storyloom`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # imported (by a module scan, say) it does nothing
    sys.exit(main())
