"""qpipe: multiprocessing's Queue and Pipe over shared memory and qpiped.

    import qpipe
    q = qpipe.Queue()                       # anonymous: shared with fork()
    q = qpipe.Queue(address="shm://jobs")   # this host's shared memory
    q = qpipe.Queue(address="tcp://q1:7450/jobs")   # through qpiped
    a, b = qpipe.Pipe()                     # or Pipe(address=..., side=0)

The objects behave as multiprocessing's (the same methods, the same
exceptions: queue.Empty, queue.Full, ValueError on a closed queue,
EOFError, multiprocessing.BufferTooShort). Items are msgpack values, so C
programs and `qpipe get --json` read what Python puts: None, bool, int,
float, str, bytes, lists and dicts (a tuple arrives as a list). Pickle
only on request (serializer="pickle"; see Queue's docstring for its risk).

The C library is libqpipe (lib/include/qpipe.h); this package calls only
its public API, through cffi.
"""
import pkgutil

# A build tree keeps the compiled qpipe._lib beside, not inside, this
# folder (build/python/qpipe): let the package span both.
__path__ = pkgutil.extend_path(__path__, __name__)

from multiprocessing import AuthenticationError, BufferTooShort  # noqa: E402

from ._core import QpipeError, unlink, version  # noqa: E402
from .queues import JoinableQueue, Queue, SimpleQueue  # noqa: E402
from .connection import Connection, Pipe  # noqa: E402
from . import connection  # noqa: E402
from .multi import get_any, partition_pick, partition_servers  # noqa: E402

__all__ = [
    "Queue", "JoinableQueue", "SimpleQueue", "Pipe", "Connection",
    "connection", "QpipeError", "BufferTooShort", "AuthenticationError",
    "unlink", "version", "get_any", "partition_pick", "partition_servers",
]
