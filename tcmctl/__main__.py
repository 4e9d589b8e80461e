"""Entry point of ``tcmctl``. ``tcmctl hook`` takes a fast path that never imports click."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "hook":
        from tcmctl.hook import main as hook_main

        sys.exit(hook_main(sys.argv[2:]))
    from tcmctl.cli import run

    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
