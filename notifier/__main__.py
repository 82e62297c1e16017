"""``python -m notifier --host 127.0.0.1 --port 8090``: serve the notifier (see :mod:`notifier.serve`)."""

from __future__ import annotations

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main())
