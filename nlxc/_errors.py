"""Exceptions raised by nlxc."""


class InputError(ValueError):
    """Bad user input (geometry, charge/spin, basis, functional name, configuration).

    The message is one line that names the problem; the CLI prints it as
    `nlxc: error: <message>` on standard error, without a traceback, and exits with status 2.
    """
