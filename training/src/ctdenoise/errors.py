"""The one exception type that reaches users as a single line."""


class CTDenoiseError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and, where there is one, the fix. The command
    line prints it as ``error: <message>`` and exits with status 2; it never shows a traceback.
    """
