"""``python -m prefetchctl status|preflight|unpin --stack <name> [--region <region>]``.

Exit status, for scripts: status 0 every repository at 100%, 1 below, 2 cannot read; preflight 0 ready, 1 findings,
2 cannot read; unpin 0 sent, 2 not sent; 2 for an unknown command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from prefetchctl import preflight, status, unpin

COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "status": status.main,
    "preflight": preflight.main,
    "unpin": unpin.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        sys.stderr.write(f"usage: python -m prefetchctl {{{'|'.join(COMMANDS)}}} --stack <name> [--region <region>]\n")
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
