"""The one exception type for mistakes a user can fix (config, data, checkpoints).

Entry points catch it and print its message as a single line on stderr with a
non-zero exit status; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A user-fixable problem; the message names the field or file and the fix."""


def check(condition: bool, message: str) -> None:
    """Raises UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)


# The exit status of a command stopped by Ctrl-C (128 + SIGINT, what a shell reports).
INTERRUPTED_STATUS = 130
