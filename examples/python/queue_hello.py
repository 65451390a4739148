# Python's classic multiprocessing example, with qpipe's Queue: only the
# import and the address differ. No address: an anonymous shared-memory
# queue; shm://NAME or tcp://HOST:PORT/NAME (qpiped) to name one.
#
# usage: python3 queue_hello.py [ADDRESS]
import sys
from multiprocessing import Process
from qpipe import Queue

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else None


def f(q):
    q.put([42, None, 'hello'])


if __name__ == '__main__':
    q = Queue(address=ADDRESS)
    p = Process(target=f, args=(q,))
    p.start()
    print(q.get())    # prints "[42, None, 'hello']"
    p.join()
