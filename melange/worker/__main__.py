"""``python -m melange.worker CONFIG``: one worker process, as the supervisor starts it."""

import logging
import os
import sys
import threading
import time

from melange.worker.child import main

code = main()
deadline = time.monotonic() + 2.0  # idle executor threads finish within moments
others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
for thread in others:
    thread.join(max(0.0, deadline - time.monotonic()))
stuck = [thread for thread in others if thread.is_alive()]
if stuck:
    # A handler still running past its grace period (e.g. a synchronous one in asyncio's
    # executor) would keep the interpreter from exiting; the dispatchers already stopped.
    logging.getLogger("melange.worker").warning(
        "exiting with %d thread(s) still running: %s", len(stuck), ", ".join(t.name for t in stuck)
    )
    logging.shutdown()
    os._exit(code)
sys.exit(code)
