"""The one error type for mistakes a user can fix: a bad path, file, config field or workdir.

Raise `UserError` where the problem is detected, with a message that names the file, field or
value at fault. The command-line entry points (`cli.run`) print it as one `error: ...` line
(plus the optional hint) and exit with status 2; anything else is an internal failure and keeps
its traceback. `UserError` is a ValueError, so code that catches ValueError still does.
"""

from typing import Optional


class UserError(ValueError):
  """A problem with the user's input, reported without a traceback.

  Attributes:
    hint: an optional second line saying how to fix it.
  """

  def __init__(self, message: str, hint: Optional[str] = None):
    super().__init__(message)
    self.hint = hint
