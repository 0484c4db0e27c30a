"""Errors that mean "the input is wrong", as opposed to a bug."""


class SamiInputError(ValueError):
    """Bad user input: a file, field, line or example is wrong.

    The CLI prints the message on one line and exits with code 2, without a traceback.
    The message must name where the problem is (file and line, config field, example id).
    """
