"""``python -m ailab_async.cli``: the ``ailab-async`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
