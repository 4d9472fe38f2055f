"""The one exception type users see: a one-line message that says what is wrong and what to do."""


class SbrjobError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with code 2."""
