"""User-facing errors: one clear line, non-zero exit, no traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake in the user's input (config, files, paths): reported as one line, exit code 2."""


def exit_on_user_error(main):
    """Wrap a CLI entry point so a UserError prints `error: <message>` to stderr and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
