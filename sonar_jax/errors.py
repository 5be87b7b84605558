"""The one error class of our own: a problem with what the caller passed (a flag, a language
code, an output that exists), as opposed to a failure while doing the work.

It is a ValueError, so code that catches ValueError keeps working; the CLI exits with status 2
for it (usage) and 1 for everything else (failures).
"""


class UsageError(ValueError):
    """The arguments are wrong: the caller must change what they pass."""
