"""A get over many queues, and where a key goes on a queue over several
servers.

    i, obj = qpipe.get_any([urgent, normal], timeout=5)   # urgent first
    qpipe.partition_pick(["h1:7450", "h2:7450", "h3:7450"], "user:42")

get_any takes from whichever queue has an item, the first listed first
(Redis BLPOP), and waits on all of them; its queues may mix shared memory
and servers. partition_pick is rendezvous (highest random weight)
hashing, written here in Python and placing keys exactly as the C library
and `qpipe pick` do: weight = splitmix64(FNV-1a 64 of the server string as
written in the address, a 0 byte, the key), the highest weight wins, a tie
to the lower index.
"""
import queue as _pyqueue

from ._lib import ffi, lib
from ._core import error, to_ms, waiting

__all__ = ["get_any", "partition_pick", "partition_servers"]

_M = (1 << 64) - 1


def _mix(x):
    x ^= x >> 30
    x = (x * 0xbf58476d1ce4e5b9) & _M
    x ^= x >> 27
    x = (x * 0x94d049bb133111eb) & _M
    x ^= x >> 31
    return x


def _weight(server, key):
    h = 0xcbf29ce484222325
    for b in server.encode() + b"\0" + key:
        h = ((h ^ b) * 0x100000001b3) & _M
    return _mix(h)


def partition_pick(servers, key):
    """The index of the server (of those given as written in the address,
    "HOST:PORT" or an ipc path) that a put with key goes to."""
    k = key.encode() if isinstance(key, str) else bytes(key)
    best, bw = 0, -1
    for i, s in enumerate(servers):
        w = _weight(s, k)
        if w > bw:
            best, bw = i, w
    return best


def partition_servers(address):
    """The servers of an address with several servers, as written:
    "tcp://h1:7450,h2:7450/jobs" -> ["h1:7450", "h2:7450"]."""
    rest = address.split("://", 1)[1]
    return rest.rsplit("/", 1)[0].split(",")


def get_any(queues, block=True, timeout=None):
    """(index, obj): an item from whichever of queues has one, the first
    listed first; waits (block, timeout seconds) on all of them;
    queue.Empty if none gets one. The queues share one serializer."""
    queues = list(queues)
    if not queues:
        raise ValueError("get_any needs at least one queue")
    pickle = queues[0]._pickle
    if any(q._pickle != pickle for q in queues):
        raise ValueError("get_any: the queues' serializers differ")
    hs = ffi.new("qp_queue *[]", [q._handle() for q in queues])
    which = ffi.new("size_t *")
    bufp = ffi.new("void **")
    lenp = ffi.new("size_t *")
    fn = lib.qp_queue_get_any if pickle else lib.qp_queue_get_any_obj
    ms = 0 if not block else to_ms(timeout)
    rc = waiting(lambda s: fn(hs, len(queues), which, bufp, lenp, s), ms,
                 (lib.QP_EEMPTY,))
    if rc == lib.QP_EEMPTY:
        raise _pyqueue.Empty
    if rc != lib.QP_OK:
        raise error(rc, repr(queues[which[0]]))
    q = queues[which[0]]
    return which[0], q._loads_c(bufp[0], lenp[0])
