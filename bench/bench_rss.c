/*
 * bench_rss.c - runs a command and reports the peak resident set size of
 * its process tree: the largest ru_maxrss of the command and the children
 * it waited for (wait4). bench/run starts every measured program through
 * it, because a process fork()ed from the (much larger) Python harness
 * would carry the harness's high-water mark across exec().
 *
 *   bench_rss COMMAND [ARG...]
 *
 * The command's stdout and stderr pass through untouched; the figure goes
 * to stderr as a last line "bench_rss: maxrss_kb=N". The exit status is
 * the command's (128 + signal if it was killed). No locking.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	struct rusage ru;
	pid_t pid;
	int st;

	if (argc < 2 || strcmp(argv[1], "--help") == 0) {
		fprintf(argc < 2 ? stderr : stdout,
		    "usage: bench_rss COMMAND [ARG...]\n"
		    "Runs COMMAND; prints the peak RSS of its process tree "
		    "to stderr.\n");
		return argc < 2 ? 2 : 0;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "bench_rss: fork: %s\n", strerror(errno));
		return 125;
	}
	if (pid == 0) {
		execvp(argv[1], argv + 1);
		fprintf(stderr, "bench_rss: cannot run %s: %s\n", argv[1],
		    strerror(errno));
		_exit(127);
	}
	while (wait4(pid, &st, 0, &ru) < 0) {
		if (errno != EINTR) {
			fprintf(
			    stderr, "bench_rss: wait4: %s\n", strerror(errno));
			return 125;
		}
	}
	fprintf(stderr, "\nbench_rss: maxrss_kb=%ld\n", ru.ru_maxrss);
	if (WIFSIGNALED(st)) {
		return 128 + WTERMSIG(st);
	}
	return WEXITSTATUS(st);
}
