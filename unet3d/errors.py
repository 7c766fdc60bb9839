"""The one root of every error a user can cause (a bad config, dataset, space, option or address).

Library code raises a subclass with a one-line message that names the file or field and the rule
it breaks; the CLI's ``main()`` catches :class:`UserError`, prints that line and exits with 2. Any
other exception is a bug in this project and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; ``str(e)`` is the whole message, one line."""


class OptionError(UserError, ValueError):
    """An argument (a command-line option) out of its range: a count, a size, a seed; the message
    names the option and the rule, e.g. ``--cases 0: must be at least 1``."""
