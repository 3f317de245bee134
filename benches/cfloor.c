/* The C floor of the benchmarks (benches/compare.py, benches/bench_node.py): the reads and the parsing of gridpilot's
 * native fast tier (rust/src/core/sampler.rs) and nothing else, so no sampler doing that work can go below it.
 *
 * Per process, through descriptors kept open between samples and reopened when the pid's start time changes:
 * /proc/<pid>/stat (parsed: utime, stime, cutime, cstime, threads, start time, vsize, rss, faults),
 * /proc/<pid>/io (parsed: rchar, wchar, read_bytes, write_bytes), and for discovery down a tree the children
 * file of the main thread (kept open) or, for a process with more threads, of every thread (opened per sample, as
 * the native sampler does). With cgroup discovery the members come from <dir>/cgroup.procs (and sub-cgroups), read
 * afresh each sample, and no children files are read.
 *
 *   cfloor time REPEATS INNER ROOT        best seconds per sample of the tree under ROOT (first sample excluded)
 *   cfloor loop HZ tree ROOT...           sample every tree HZ times a second until SIGTERM
 *   cfloor loop HZ cgroup DIR...          the same, members from each cgroup
 *
 * `time` prints "nprocs=N best_s=X"; `loop` prints "ready nprocs=N" after its first sample and
 * "done ticks=T late=L nprocs=N" when it gets SIGTERM. N is the sum over the targets of the last sample. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int pid; /* 0: free slot */
    unsigned long gen;
    unsigned long long starttime;
    int stat_fd, io_fd, kids_fd;
} Tracked;

typedef struct {
    const char *target; /* root pid (tree) or cgroup directory */
    int root;
    Tracked *slots;
    size_t cap, used;
    unsigned long gen;
} Sampler;

typedef struct {
    unsigned long long utime, stime, cutime, cstime, threads, starttime, vsize, rss, minflt, majflt;
} Stat;

typedef struct {
    unsigned long long nprocs, threads, cpu, children_cpu, rss, vsize, minflt, majflt, rchar, wchar, rbytes, wbytes;
} Sample;

static char buf[1 << 16];
static int *stack;
static size_t stack_len, stack_cap;
static volatile sig_atomic_t stop;

static void push(int pid) {
    if (stack_len == stack_cap) {
        stack_cap = stack_cap ? stack_cap * 2 : 1024;
        stack = realloc(stack, stack_cap * sizeof *stack);
        if (!stack) abort();
    }
    stack[stack_len++] = pid;
}

/* pread from offset 0 until EOF; -1 on error (ESRCH once the task is gone). */
static ssize_t read_all(int fd) {
    size_t off = 0;
    for (;;) {
        ssize_t n = pread(fd, buf + off, sizeof buf - 1 - off, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        /* As the native sampler: a seq_file ends a read early only at its end or when its page is full, so a first
           read well short of a page and of the room given is the whole file (no read that returns 0). */
        if (n == 0 || off + (size_t)n >= sizeof buf - 1 || (off == 0 && n < 2048)) {
            off += (size_t)n;
            buf[off] = 0;
            return (ssize_t)off;
        }
        off += (size_t)n;
    }
}

static int parse_stat(const char *text, Stat *s) {
    const char *p = strrchr(text, ')');
    if (!p) return -1;
    p += 2; /* field 3, the state */
    unsigned long long f[50];
    int n = 0;
    while (*p && n < 50) {
        while (*p == ' ') p++;
        if (!*p || *p == '\n') break;
        if (n == 0) { /* the state letter */
            f[n++] = 0;
            p++;
            continue;
        }
        char *end;
        long long v = strtoll(p, &end, 10);
        f[n++] = (unsigned long long)v;
        p = end;
    }
    if (n < 22) return -1;
    /* f[k] is field k + 3 of proc(5). */
    s->minflt = f[7];
    s->majflt = f[9];
    s->utime = f[11];
    s->stime = f[12];
    s->cutime = f[13];
    s->cstime = f[14];
    s->threads = f[17];
    s->starttime = f[19];
    s->vsize = f[20];
    s->rss = f[21];
    return 0;
}

static void parse_io(const char *text, Sample *out) {
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *colon = strchr(p, ':');
        if (!colon) break;
        unsigned long long v = strtoull(colon + 1, NULL, 10);
        size_t len = (size_t)(colon - p);
        if (len == 5 && !memcmp(p, "rchar", 5)) out->rchar += v;
        else if (len == 5 && !memcmp(p, "wchar", 5)) out->wchar += v;
        else if (len == 10 && !memcmp(p, "read_bytes", 10)) out->rbytes += v;
        else if (len == 11 && !memcmp(p, "write_bytes", 11)) out->wbytes += v;
    }
}

static void push_pid_list(const char *text) {
    const char *p = text;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        push((int)v);
        p = end;
    }
}

static Tracked *find(Sampler *s, int pid) {
    size_t mask = s->cap - 1;
    for (size_t i = ((size_t)pid * 2654435761u) & mask;; i = (i + 1) & mask) {
        if (s->slots[i].pid == pid || s->slots[i].pid == 0) return &s->slots[i];
    }
}

static void close_tracked(Tracked *t) {
    close(t->stat_fd);
    if (t->io_fd >= 0) close(t->io_fd);
    if (t->kids_fd >= 0) close(t->kids_fd);
}

/* Keep the entries of this generation only; open addressing has no cheap delete, so the table is rebuilt. */
static void rebuild(Sampler *s, size_t cap) {
    Tracked *old = s->slots;
    size_t old_cap = s->cap;
    s->slots = calloc(cap, sizeof *s->slots);
    if (!s->slots) abort();
    s->cap = cap;
    s->used = 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].pid) continue;
        if (old[i].gen != s->gen) {
            close_tracked(&old[i]);
            continue;
        }
        *find(s, old[i].pid) = old[i];
        s->used++;
    }
    free(old);
}

static int open_proc(int pid, int tid, const char *name) {
    char path[128];
    if (tid) snprintf(path, sizeof path, "/proc/%d/task/%d/%s", pid, tid, name);
    else snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    return open(path, O_RDONLY | O_CLOEXEC);
}

/* Read the process's stat through its kept descriptor (opening it and io, children on first sight, or again for a
 * reused pid); NULL when the process is gone. */
static Tracked *read_tracked(Sampler *s, int pid, Stat *st, int want_kids) {
    Tracked *t = find(s, pid);
    if (t->pid) {
        if (read_all(t->stat_fd) > 0 && parse_stat(buf, st) == 0 && st->starttime == t->starttime) {
            t->gen = s->gen;
            return t;
        }
        /* Dead, or the pid is another process now: its slot is reused below (same key) or freed at the end. */
        close_tracked(t);
        int fd = open_proc(pid, 0, "stat");
        if (fd < 0 || read_all(fd) <= 0 || parse_stat(buf, st) != 0) {
            if (fd >= 0) close(fd);
            t->stat_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* closed with the slot at the end */
            t->io_fd = t->kids_fd = -1;
            return NULL;
        }
        t->gen = s->gen;
        t->starttime = st->starttime;
        t->stat_fd = fd;
        t->io_fd = open_proc(pid, 0, "io");
        t->kids_fd = want_kids ? open_proc(pid, pid, "children") : -1;
        return t;
    }
    int fd = open_proc(pid, 0, "stat");
    if (fd < 0) return NULL;
    if (read_all(fd) <= 0 || parse_stat(buf, st) != 0) {
        close(fd);
        return NULL;
    }
    if ((s->used + 1) * 2 > s->cap) {
        rebuild(s, s->cap * 2);
        t = find(s, pid);
    }
    t->pid = pid;
    t->gen = s->gen;
    t->starttime = st->starttime;
    t->stat_fd = fd;
    t->io_fd = open_proc(pid, 0, "io");
    t->kids_fd = want_kids ? open_proc(pid, pid, "children") : -1;
    s->used++;
    return t;
}

static void visit(Tracked *t, const Stat *st, Sample *out) {
    out->nprocs++;
    out->threads += st->threads;
    out->cpu += st->utime + st->stime;
    out->children_cpu += st->cutime + st->cstime;
    out->rss += st->rss;
    out->vsize += st->vsize;
    out->minflt += st->minflt;
    out->majflt += st->majflt;
    if (t->io_fd >= 0 && read_all(t->io_fd) > 0) parse_io(buf, out);
}

static void push_children(Tracked *t, const Stat *st) {
    if (st->threads <= 1 && t->kids_fd >= 0) {
        if (read_all(t->kids_fd) >= 0) push_pid_list(buf);
        return;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", t->pid);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int tid = atoi(e->d_name);
        if (tid <= 0) continue;
        int fd = open_proc(t->pid, tid, "children");
        if (fd < 0) continue;
        if (read_all(fd) >= 0) push_pid_list(buf);
        close(fd);
    }
    closedir(d);
}

static void read_cgroup_procs(const char *dir, int top) {
    char path[4096];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (top) fprintf(stderr, "cfloor: %s: %s\n", path, strerror(errno));
        return;
    }
    /* cgroup.procs can exceed the buffer for a big job: parse it in pieces, carrying a split number over. */
    char chunk[8192];
    long cur = -1;
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (chunk[i] >= '0' && chunk[i] <= '9') cur = (cur < 0 ? 0 : cur * 10) + (chunk[i] - '0');
            else if (cur >= 0) {
                push((int)cur);
                cur = -1;
            }
        }
    }
    if (cur >= 0) push((int)cur);
    close(fd);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_type == DT_DIR && e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            read_cgroup_procs(path, 0);
        }
    }
    closedir(d);
}

static void sample(Sampler *s, int cgroup, Sample *out) {
    s->gen++;
    stack_len = 0;
    Stat st;
    if (cgroup) {
        read_cgroup_procs(s->target, 1);
        for (size_t i = 0; i < stack_len; i++) {
            Tracked *t = read_tracked(s, stack[i], &st, 0);
            if (t) visit(t, &st, out);
        }
    } else {
        /* The native sampler also revisits the processes it saw before that have left the tree (a daemonising
         * payload); the benchmark's trees have none, so the floor only walks down from the root. */
        push(s->root);
        while (stack_len) {
            int pid = stack[--stack_len];
            Tracked *t = find(s, pid);
            if (t->pid && t->gen == s->gen) continue; /* seen in this sample */
            t = read_tracked(s, pid, &st, 1);
            if (!t) continue;
            visit(t, &st, out);
            push_children(t, &st);
        }
    }
    size_t live = 0;
    for (size_t i = 0; i < s->cap; i++) live += s->slots[i].pid && s->slots[i].gen == s->gen;
    if (live != s->used) rebuild(s, s->cap);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static void init(Sampler *s, const char *target, int cgroup) {
    memset(s, 0, sizeof *s);
    s->target = target;
    s->root = cgroup ? 0 : atoi(target);
    if (!cgroup && s->root <= 0) {
        fprintf(stderr, "cfloor: not a pid: %s\n", target);
        exit(2);
    }
    s->cap = 256;
    s->slots = calloc(s->cap, sizeof *s->slots);
    if (!s->slots) abort();
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "time")) {
        int repeats = atoi(argv[2]), inner = atoi(argv[3]);
        Sampler s;
        init(&s, argv[4], 0);
        Sample out = {0};
        sample(&s, 0, &out);
        double best = 1e30;
        for (int r = 0; r < repeats; r++) {
            double t0 = now();
            for (int i = 0; i < inner; i++) {
                memset(&out, 0, sizeof out);
                sample(&s, 0, &out);
            }
            double per = (now() - t0) / inner;
            if (per < best) best = per;
        }
        printf("nprocs=%llu best_s=%.9f\n", out.nprocs, best);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "loop") && (!strcmp(argv[3], "tree") || !strcmp(argv[3], "cgroup"))) {
        double hz = atof(argv[2]);
        int cgroup = !strcmp(argv[3], "cgroup");
        int n = argc - 4;
        if (hz <= 0) {
            fprintf(stderr, "cfloor: HZ must be > 0, got %s\n", argv[2]);
            return 2;
        }
        Sampler *ss = calloc((size_t)n, sizeof *ss);
        for (int i = 0; i < n; i++) init(&ss[i], argv[4 + i], cgroup);
        struct sigaction sa = {0};
        sa.sa_handler = on_term;
        sigaction(SIGTERM, &sa, NULL);
        unsigned long ticks = 0, late = 0;
        unsigned long long seen = 0;
        double period = 1.0 / hz, next = now();
        int ready = 0;
        while (!stop) {
            seen = 0;
            for (int i = 0; i < n; i++) {
                Sample out = {0};
                sample(&ss[i], cgroup, &out);
                seen += out.nprocs;
            }
            ticks++;
            if (!ready) {
                printf("ready nprocs=%llu\n", seen);
                fflush(stdout);
                ready = 1;
            }
            next += period;
            double wait = next - now();
            if (wait < 0) { /* this tick overran the period: count it and start again from now */
                late++;
                next = now();
                continue;
            }
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        printf("done ticks=%lu late=%lu nprocs=%llu\n", ticks, late, seen);
        return 0;
    }
    fprintf(stderr, "usage: cfloor time REPEATS INNER ROOT | cfloor loop HZ tree|cgroup TARGET...\n");
    return 2;
}
