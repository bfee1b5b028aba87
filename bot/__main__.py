"""`sipas-bot` and `python -m bot`: parse the command line and run; everything else is in
`bot.cli.main` (commands) and `bot.app` (the composition root).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bot.cli.main import run


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
