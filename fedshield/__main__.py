"""``python -m fedshield``: the same entry point as the ``fedshield`` script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
