"""`python -m fallback_worker` and the `tei-fallback-worker` console script."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
