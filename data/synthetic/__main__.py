"""`python -m data.synthetic`: see data/synthetic/cli.py for the flags."""

import sys

from data.synthetic.cli import main

if __name__ == "__main__":
    sys.exit(main())
