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


def listed(values) -> str:
    """Allowed values as a message names them: 'a', 'b' or 'c'."""
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def one_of(values) -> str:
    """Allowed values as a message lists them: one of a, b, c."""
    return f"one of {', '.join(values)}"


# The exit status of a command stopped by Ctrl-C (128 + SIGINT, what a shell reports).
INTERRUPTED_STATUS = 130
