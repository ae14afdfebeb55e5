"""Test-only fault injection: stop a stage at an exact point to test crash safety.

Production code calls ``point(label)`` at a few places (after each shard write, before
each atomic rename, after each training chunk, after each rendered snapshot, between
evaluated snapshots). It does nothing unless the environment variable ``GAN_FAULT`` is
set, which only the tests do:

    GAN_FAULT=<pattern>:<n>[:<action>]

At the ``n``-th passage (1-based, counted per process) of a point whose label matches
``pattern`` (shell-style, see :mod:`fnmatch`), the action happens: ``KILL`` (the
default: SIGKILL, as from the OOM killer or a pulled plug), ``INT`` or ``TERM`` (that
signal, sent to this process), or an errno name such as ``ENOSPC`` (raises that
``OSError``, as a full disk would). A line on stderr says which point fired.

Labels: ``shard`` (preprocess, a shard was written), ``atomic/<path>`` (src/atomic.py,
a file is complete but not yet renamed into place), ``chunk`` (training, a chunk of
steps is done), ``render`` (sample stage, a snapshot's PNGs are written), ``curve``
(evaluate, one snapshot of the quality curve is done).
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal
import sys

_SPEC = os.environ.get("GAN_FAULT", "")
_passes = 0


def _parse(spec: str) -> tuple[str, int, str]:
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and not parts[1].isdigit():  # the pattern itself holds a ':'
        parts = spec.rsplit(":", 1) + ["KILL"]
    if len(parts) == 2:
        parts.append("KILL")
    pattern, count, action = parts
    return pattern, int(count), action.upper()


def point(label: str) -> None:
    """A named point where ``GAN_FAULT`` may stop the process (no-op when it is unset)."""
    global _passes
    if not _SPEC:
        return
    pattern, count, action = _parse(_SPEC)
    if not fnmatch.fnmatchcase(label, pattern):
        return
    _passes += 1
    if _passes != count:
        return
    print(f"fault injected: {action} at {label} (passage {count})", file=sys.stderr, flush=True)
    if action in ("KILL", "INT", "TERM"):
        os.kill(os.getpid(), getattr(signal, f"SIG{action}"))
        return  # INT/TERM: the handler runs; KILL never returns
    code = getattr(errno, action)
    raise OSError(code, os.strerror(code), label.split("/", 1)[-1])
