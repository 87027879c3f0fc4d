"""Deprecated: import from `chunkd` instead (`from chunkd import Job, Context, Sink`).

Kept for one release so job modules written against `daemon.sdk` still load: 0.1.x has
it, chunkd 0.2.0 removes it (tests/unit/test_sdk.py fails once the version reaches it)."""
import warnings

from chunkd import *  # noqa: F403 - the same public names, nothing internal
from chunkd import __all__  # noqa: F401

REMOVED_IN = "0.2.0"

warnings.warn(f"daemon.sdk is deprecated and is removed in chunkd {REMOVED_IN}: import from chunkd "
              "(e.g. `from chunkd import Job, Context, Sink`)", DeprecationWarning, stacklevel=2)
