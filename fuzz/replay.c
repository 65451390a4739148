/*
 * replay.c - runs fuzz_wire's entry point over files and directories of
 * inputs without libFuzzer: the ordinary build replays the seed corpus
 * (tests/corpus/wire) this way on every test run. A broken property aborts;
 * otherwise it prints how many inputs passed. Single-threaded.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long n;

	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
	    || fseek(f, 0, SEEK_SET) != 0) {
		fprintf(stderr, "replay: cannot read %s\n", path);
		if (f != NULL) {
			fclose(f);
		}
		return -1;
	}
	if ((buf = malloc((size_t) n + 1)) == NULL
	    || fread(buf, 1, (size_t) n, f) != (size_t) n) {
		fprintf(stderr, "replay: cannot read %s\n", path);
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t) n);
	free(buf);
	return 0;
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

int
main(int argc, char **argv)
{
	size_t done = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) != 0) {
			fprintf(stderr, "replay: no such path %s\n", argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			if (replay_file(argv[i]) != 0) {
				return 1;
			}
			done++;
			continue;
		}
		struct dirent **ents;
		int n = scandir(argv[i], &ents, NULL, NULL);
		if (n < 0) {
			fprintf(stderr, "replay: cannot list %s\n", argv[i]);
			return 1;
		}
		char **names = calloc((size_t) n + 1, sizeof(*names));
		size_t k = 0;
		for (int e = 0; e < n; e++) {
			if (ents[e]->d_name[0] != '.' && names != NULL) {
				names[k++] = strdup(ents[e]->d_name);
			}
			free(ents[e]);
		}
		free(ents);
		if (names == NULL) {
			return 1;
		}
		qsort(names, k, sizeof(*names), cmp_names);
		for (size_t e = 0; e < k; e++) {
			char path[4096];
			snprintf(
			    path, sizeof(path), "%s/%s", argv[i], names[e]);
			if (names[e] == NULL || replay_file(path) != 0) {
				return 1;
			}
			free(names[e]);
			done++;
		}
		free(names);
	}
	if (done == 0) {
		fprintf(stderr, "replay: no inputs\n");
		return 1;
	}
	printf("replay: %zu inputs passed\n", done);
	return 0;
}
