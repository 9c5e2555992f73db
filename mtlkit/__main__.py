"""``python -m mtlkit``: the same command as ``mtlkit``."""
import sys

from mtlkit.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m mtlkit"))
