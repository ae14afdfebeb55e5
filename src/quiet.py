"""Keep TensorFlow's start-up chatter out of the stages' output, and nothing else.

While the ``tensorflow`` package loads, its C++ libraries print lines through absl that
neither ``TF_CPP_MIN_LOG_LEVEL`` nor Python's logging controls (absl's settings do not
exist yet): ``WARNING: All log messages before absl::InitializeLog() is called are written
to STDERR``, ``I0000 ... oneDNN custom operations are on ...`` and, from a CUDA build on
a machine without a GPU, ``Could not find cuda drivers``. In a ``dvc repro`` log they read
as failures. (The CPU build that ``make`` installs, ``tensorflow-cpu``, loads no CUDA
library at all, so the ``failed call to cuInit`` error never happens; see the README.)

:func:`install` (run by ``import src``, so before any stage imports TensorFlow) adds an
import hook: while ``tensorflow`` itself is being imported, file descriptor 2 goes to a
temporary file; then every line except those known start-up lines is written back to
stderr. Anything else the import prints (a Python warning, a C++ warning or error) and
everything after the import is untouched (except where a caller wraps a block in
:func:`filtered_stderr` too: the classifier's Keras ``fit``, for one harmless TensorFlow
2.21 line, ``NodeDef mentions attribute use_unbounded_threadpool``, and the first call of
the compiled train step, for Grappler's ``remapper failed``). ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2: no C++
INFO or WARNING lines (such as tf.data's end-of-sequence notices); C++ errors, Python
warnings and the stages' own lines show. Set it in the environment to see more.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# Whole lines TensorFlow prints that say nothing is wrong: while it loads, and in Keras' fit on arrays.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:. ]+\d+ \S+\.cc:\d+\] .*"                       # C++ INFO lines (oneDNN, CUDA stubs, CPU features)
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    # Grappler on the first call of a compiled step: the remapper pass gives up on a pattern
    # (seen with bfloat16 convolutions on oneDNN) and the graph runs unfused, as if it were off.
    r"|E\d{4} [\d:. ]+\d+ meta_optimizer\.cc:\d+\] remapper failed: .*"
    # Keras' array pipeline on TensorFlow 2.21 (the attribute is ignored; nothing is wrong).
    r"|E\d{4} [\d:. ]+\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool "
    r"which is not in the op definition: .*)\s*$")


@contextlib.contextmanager
def filtered_stderr():
    """Capture file descriptor 2 for the block; afterwards write back all but :data:`NOISE` lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # everything else as the real loader
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()  # once: find the real package, then step aside
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def install() -> None:
    """Filter TensorFlow's start-up lines when it is first imported (no-op if it already is)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
