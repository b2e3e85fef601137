"""The base class of errors a user can fix: params, data, files, devices, weights, inputs.

Entry points print a `UserError` as one line and exit 2; any other exception is a bug and keeps its
traceback. Each error names what to change (the key, the file and record, the input). The concrete
classes keep a builtin base too (ConfigError is a ValueError, ShardError a RuntimeError), so code
that catches those still does.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message is one line that names it."""
