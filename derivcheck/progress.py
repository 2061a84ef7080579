"""Progress on a terminal for anything that may take over a second.

``with status("deriving affine"):`` shows nothing for the first second; after
that, on a terminal (stderr is a TTY), one line with the elapsed time that is
rubbed out when the step ends. Off a terminal it prints nothing, so logs and
``--format json`` stay clean.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time

DELAY = 1.0  # seconds before a step is shown


@contextlib.contextmanager
def status(message: str, stream=None):
    stream = stream or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        yield
        return
    done = threading.Event()
    start = time.monotonic()
    shown = [False]

    def tick():
        if done.wait(DELAY):
            return
        while not done.is_set():
            shown[0] = True
            stream.write(f"\r\x1b[K{message}... {time.monotonic() - start:.0f} s")
            stream.flush()
            done.wait(0.5)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if shown[0]:
            stream.write("\r\x1b[K")
            stream.flush()
