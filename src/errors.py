"""User-facing errors and the wrapper that turns them into one line and exit status 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad params, bad input file, unwritable path).

    Printed as one line, without a traceback, and the process exits with status 2.
    """


def stage_main(fn: Callable[[], None]) -> Callable[[], None]:
    """Run a stage's ``main`` so that user errors end with one line and exit status 2."""

    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            fn()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:
            # Full disk, read-only folder, missing permission: say which file, no traceback.
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
