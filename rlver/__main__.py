import sys

from rlver.cli import main

if __name__ == "__main__":
    sys.exit(main())
