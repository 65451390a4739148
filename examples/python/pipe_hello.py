# Python's classic multiprocessing Pipe example, with qpipe's Pipe: only
# the import and the address differ. No address: shared memory; a
# tcp://HOST:PORT/NAME address: a pipe through qpiped.
#
# usage: python3 pipe_hello.py [ADDRESS]
import sys
from multiprocessing import Process
from qpipe import Pipe

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else None


def f(conn):
    conn.send([42, None, 'hello'])
    conn.close()


if __name__ == '__main__':
    parent_conn, child_conn = Pipe(address=ADDRESS)
    p = Process(target=f, args=(child_conn,))
    p.start()
    print(parent_conn.recv())   # prints "[42, None, 'hello']"
    p.join()
