"""`python -m tfquant.export --help`: see `tfquant.export.cli`."""

import sys

from tfquant.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
