"""The one exception type for user mistakes.

Bad paths, malformed YAML, unknown model names, wrong weights files and the like raise
:class:`EfyoloError` with a message that names the file, line or key. The CLI prints the
message on one line and exits with status 2. Programming errors keep raising normally.
"""


class EfyoloError(Exception):
    """A user-facing error: the message says what is wrong and where (file, line or key)."""
