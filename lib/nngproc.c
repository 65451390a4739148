/*
 * nngproc.c - which process may use nng (nngproc.h): the process that
 * first set up a network handle claims nng; its forked children see the
 * claim (the variable is copied by fork) and refuse. A child forked before
 * the first claim may claim nng for itself, as nng never started in its
 * parent. Locking: the claim is one atomic compare-and-swap.
 */
#include "nngproc.h"

#include <unistd.h>

/* The process whose network handles started nng (0: none yet). */
static pid_t np_owner;

int
qpi_nng_claim(const char *what)
{
	pid_t me = getpid(), first = 0;

	if (__atomic_compare_exchange_n(&np_owner, &first, me, false,
	        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
	    || first == me) {
		return QP_OK;
	}
	return qpi_err(QP_EINVAL,
	    "cannot reach %s: process %ld, which this one was forked from, "
	    "already used the network layer (nng), which does not survive "
	    "fork(); listen, dial and open tls+tcp:// addresses only in "
	    "processes that did not inherit it (fork before the first "
	    "such call, or exec); tcp:// and ipc:// queues need no nng",
	    what, (long) first);
}

bool
qpi_nng_forked(pid_t owner)
{
	return owner != getpid();
}

int
qpi_nng_forked_err(const char *what, pid_t owner)
{
	return qpi_err(QP_EINVAL,
	    "%s was made in process %ld: a network handle does not "
	    "survive fork() (nng); a forked child can only close and free "
	    "it (open, listen or dial before forking, in the process that "
	    "uses it)",
	    what, (long) owner);
}
