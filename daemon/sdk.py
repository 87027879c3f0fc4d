"""Deprecated: import from `chunkd` instead (`from chunkd import Job, Context, Sink`).

Kept for one release so job modules written against `daemon.sdk` still load; it will be
removed in the next one."""
import warnings

from chunkd import *  # noqa: F403 - the same public names, nothing internal
from chunkd import __all__  # noqa: F401

warnings.warn("daemon.sdk is deprecated: import from chunkd (e.g. `from chunkd import Job, Context, Sink`)",
              DeprecationWarning, stacklevel=2)
