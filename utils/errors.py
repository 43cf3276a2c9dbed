"""User-facing errors: one clear line, non-zero exit, no traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake in the user's input (config, files, paths): reported as one line, exit code 2."""

    def __init__(self, message: str = ''):
        super().__init__(_strip_worker_traceback(str(message)))


def _strip_worker_traceback(message: str) -> str:
    # A DataLoader worker re-raises its UserError as UserError("Caught UserError in DataLoader worker
    # process N.\nOriginal Traceback ...\nutils.errors.UserError: <message>"): keep only <message>.
    if message.startswith('Caught UserError') and 'Original Traceback' in message:
        last_line = message.rstrip().splitlines()[-1]
        return last_line.split('UserError: ', 1)[-1]
    return message


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
