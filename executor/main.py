"""``bin/executor``: not built yet (see issue 3)."""

import sys


def main() -> None:
    print("executor: not implemented yet", file=sys.stderr)
    sys.exit(2)
