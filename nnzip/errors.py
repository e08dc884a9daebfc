"""The one exception type users see.

Library code raises :class:`NnzipError` for anything the user can fix (a missing file, a bad option,
an incompatible model). The message names the problem and says what to do; the CLI prints it as a
single line and exits non-zero instead of showing a traceback from deep inside torch.
"""


class NnzipError(Exception):
    """A problem with the user's input, stated as 'what is wrong: what to do'."""
