"""`python -m runtime --models DIR --port N [--host H]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runtime.errors import ServeError


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings and serve; bad settings or models are one line on stderr, exit 1."""
    from runtime.server import serve
    from runtime.settings import from_args

    try:
        settings = from_args(sys.argv[1:] if argv is None else argv)
        return serve(settings)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
