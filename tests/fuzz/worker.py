"""The fuzz worker: a long-lived child process that runs cases (``cases.py``) sent by the
test process (``harness.Worker``), so that a kernel that crashes kills only this process
(the parent reports the signal and starts a new worker) while compiled models and kernels
are reused from case to case.

Protocol on stdin/stdout: an 8-byte little-endian length, then a pickle; requests are
``(case name, kwargs)``, replies the outcome dict of :func:`cases.run`. The pickles are the
test suite's own data, never a file under test. Anything the case prints goes to stderr.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints (ours, Numba's) must not corrupt the protocol
    import cases

    requests = sys.stdin.buffer
    while True:
        head = requests.read(8)
        if len(head) < 8:
            return
        name, kwargs = pickle.loads(requests.read(struct.unpack("<Q", head)[0]))
        data = pickle.dumps(cases.run(name, kwargs))
        replies.write(struct.pack("<Q", len(data)) + data)
        replies.flush()


if __name__ == "__main__":
    main()
