"""The errors that mean a wrong config, path, checkpoint or number, not a bug: said in one line."""


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from: unreadable, truncated, or of another layout."""


MISTAKES = (ValueError, FileNotFoundError, FileExistsError, CheckpointError, FloatingPointError)
"""What the entry points print as `prog: error: …` (exit 1) instead of a traceback, and what ranks agree on."""
