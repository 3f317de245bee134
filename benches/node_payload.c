/* One job of the full-node benchmark (benches/bench_node.py): NPROCS processes in a tree where process i is the
 * child of process (i - 1) / FANOUT, one in ten of them with 4 threads, every process waking once a second.
 *
 *   node_payload NPROCS FANOUT [CGROUP_DIR]
 *
 * With CGROUP_DIR the root moves itself into that cgroup (writes 0 to its cgroup.procs) before it forks, so
 * every process of the job is born inside it. Each process writes one byte to its standard output once its children
 * are forked and its threads started: the bench reads exactly NPROCS bytes, so it knows how many processes a sampler
 * must see. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long nprocs, fanout;
static volatile unsigned long counter;

static void *parked(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

__attribute__((noreturn)) static void become(long index) {
    /* Fork first, while this process has one thread: fork in a threaded process copies only the calling thread. */
    for (long c = index * fanout + 1; c <= index * fanout + fanout && c < nprocs; c++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "node_payload: fork of process %ld failed: %s\n", c, strerror(errno));
            _exit(4);
        }
        if (pid == 0) {
            become(c);
            _exit(0);
        }
    }
    if (index % 10 == 5) {
        for (int t = 0; t < 3; t++) {
            pthread_t th;
            if (pthread_create(&th, NULL, parked, NULL) != 0) {
                fprintf(stderr, "node_payload: thread of process %ld failed\n", index);
                _exit(4);
            }
        }
    }
    char one = 1;
    if (write(1, &one, 1) != 1) _exit(5);
    for (;;) {
        struct timespec second = {1, 0};
        nanosleep(&second, NULL);
        counter++; /* the wake's work: a store, so the process is scheduled once a second */
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: node_payload NPROCS FANOUT [CGROUP_DIR]\n");
        return 2;
    }
    nprocs = atol(argv[1]);
    fanout = atol(argv[2]);
    if (nprocs < 1 || fanout < 1) {
        fprintf(stderr, "node_payload: NPROCS and FANOUT must be >= 1, got %s %s\n", argv[1], argv[2]);
        return 2;
    }
    if (argc == 4) {
        char path[4096];
        snprintf(path, sizeof path, "%s/cgroup.procs", argv[3]);
        int fd = open(path, O_WRONLY);
        if (fd < 0 || write(fd, "0", 1) != 1) {
            fprintf(stderr, "node_payload: cannot join %s: %s\n", path, strerror(errno));
            return 3;
        }
        close(fd);
    }
    become(0);
    return 0;
}
