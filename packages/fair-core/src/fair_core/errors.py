"""User-facing errors: the command line prints them as one line and exits with code 2."""


class FairError(Exception):
    """A problem with the user's input (spec, files, names): reported without a traceback."""
