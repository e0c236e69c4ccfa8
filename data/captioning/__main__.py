"""`python -m data.captioning`: caption images with a local MLLM (see cli.py)."""

import sys

from data.captioning.cli import main

if __name__ == "__main__":
    sys.exit(main())
