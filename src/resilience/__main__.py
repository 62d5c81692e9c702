"""``python -m resilience demo``: the chaos demo (see `resilience.demo`)."""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "demo":
        print("usage: python -m resilience demo [--help]", file=sys.stderr)
        return 2
    from .demo import main as demo

    return demo(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
