"""The one exception type for bad input: the CLI prints its message on one line and exits with code 2."""


class AfprobeError(Exception):
    """A problem with what the user asked for (a missing file, an unknown name, a value out of range).

    The message is one line that names the problem; the command line prints it and exits with code 2.
    """
