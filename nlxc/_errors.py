"""Exceptions raised by nlxc."""


class InputError(ValueError):
    """Bad user input (geometry, charge/spin, basis, functional name, configuration).

    The message is one line that names the problem; the CLI prints it without a traceback.
    """
