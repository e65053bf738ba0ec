"""What the preprocessing scripts share: a bad argument is answered in one line, as the trainers do."""
from __future__ import annotations

import sys
from contextlib import contextmanager

MISTAKES = (ValueError, OSError)
"""A wrong path, pattern, model file or value (OSError: missing, not a folder, a file where a folder goes)."""


@contextmanager
def errors_in_one_line(prog: str):
    """Turn MISTAKES into `prog: error: …` on stderr and exit status 1, without a traceback."""
    try:
        yield
    except MISTAKES as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(1)
