"""The one exception type whose message is meant for the user, not for a traceback."""


class LitMNISTError(Exception):
    """A problem the user can fix; the CLI prints the message alone and exits with status 1."""
