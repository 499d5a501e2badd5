"""The one exception type that means "the user's input is wrong".

The CLI prints a UserError as a single line and exits with code 2; anything else is a bug
in llmquant (exit 1, traceback with --debug).
"""


class UserError(Exception):
    """Bad input: a recipe, a path, a corpus, a model the tool cannot use.

    The message must name the thing (file, YAML path, module), the bad value and what is
    allowed, on one line.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split("\n")))
