# ruff: noqa: E501  (the module is C source text; its lines follow C, not Python, layout)
"""The fixed C runtime of the guest test program (the generated part is the op tables).

A coordinator process runs the statements of a scenario in order. Each task of the scenario
is a process serving commands on its own pipe pair (all pipes are made before the first
task, so a task forked by another inherits the pipes it will serve). After every statement
the coordinator prints one observation line: the result (errno, signal, return value) and
RssFile/RssAnon/RssShmem of every live task from /proc/PID/status, then the new /dev/kmsg
records. /proc/PID/smaps and pagemap are read only by an explicit `proc` statement.

Console lines: `@@O s=SCEN l=LINE e=ERRNO g=SIGNAL r=RET rss=T:FILE:ANON:SHMEM,...`,
`@@K s=SCEN l=LINE TEXT` for kernel messages, `@@END s=SCEN`.
"""

RUNTIME = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

enum { OP_TASK, OP_MMAP, OP_MUNMAP, OP_READ, OP_WRITE, OP_MADVISE, OP_MPROTECT, OP_MREMAP,
       OP_FORK, OP_EXIT, OP_PROC, OP_FILE, OP_TRUNCATE, OP_PUNCH, OP_UNOBSERVABLE, OP_THP };

struct op {
    int line, kind, task, other, bind, flags, prot, adv, dev, maymove;
    int aname, atname, fname;
    long aoff, atoff, foff, len, len2, off, align;
    const char *text;
    /* filled in by the coordinator */
    unsigned long addr, at, fixed;
    int unbound;
    int pid;
};

struct reply { int err; int sig; unsigned long ret; };

#define MAXT 16
#define MAXN 64
#define MAXD 16
static int cmdp[MAXT][2], repp[MAXT][2];
static pid_t pids[MAXT];
static long base[MAXT][3];
static int alive[MAXT];
static unsigned long names[MAXN];
static int bound[MAXN];
static char paths[MAXD][256];
static int scen;
static int kmsg = -1;

static sigjmp_buf jb;
static volatile sig_atomic_t gotsig;

static void on_fault(int sig) { gotsig = sig; siglongjmp(jb, 1); }

static void full_write(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) { if (errno == EINTR) continue; _exit(3); } p += w; n -= (size_t)w; }
}
static int full_read(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n) { ssize_t r = read(fd, p, n); if (r == 0) return -1; if (r < 0) { if (errno == EINTR) continue; return -1; } p += r; n -= (size_t)r; }
    return 0;
}

static void touch(struct op *o, struct reply *r, int wr) {
    unsigned long start = o->addr & ~4095UL, end = o->addr + (o->len > 0 ? (unsigned long)o->len : 1);
    static volatile unsigned long p;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    gotsig = 0;
    if (sigsetjmp(jb, 1)) { r->sig = gotsig; r->ret = p; return; }
    for (p = start; p < end; p += 4096) {
        if (wr) *(volatile char *)p = 1; else (void)*(volatile char *)p;
    }
}

static int mmap_flags(struct op *o) {
    int f = (o->flags & 1) ? MAP_SHARED : MAP_PRIVATE;
    if (o->dev < 0) f |= MAP_ANONYMOUS;
    if (o->flags & 2) f |= MAP_POPULATE;
    return f;
}

static void do_mmap(struct op *o, struct reply *r) {
    int fd = -1, flags = mmap_flags(o);
    unsigned long hint = 0;
    if (o->dev >= 0) {
        fd = open(paths[o->dev], (o->prot & PROT_WRITE) && (o->flags & 1) ? O_RDWR : O_RDONLY);
        if (fd < 0 && !(o->flags & 1)) fd = open(paths[o->dev], O_RDONLY);
        if (fd < 0) { r->err = errno; return; }
    }
    if (o->atname != -2) { hint = o->at; flags |= MAP_FIXED; }
    else if (o->align > 0) {
        unsigned long res = (unsigned long)o->len + (unsigned long)o->align;
        void *p = mmap(NULL, res, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) { r->err = errno; if (fd >= 0) close(fd); return; }
        hint = ((unsigned long)p + (unsigned long)o->align - 1) & ~((unsigned long)o->align - 1);
        munmap(p, res);
        flags |= MAP_FIXED_NOREPLACE;
    }
    void *m = mmap((void *)hint, (size_t)o->len, o->prot, flags, fd, o->off);
    if (m == MAP_FAILED) r->err = errno; else r->ret = (unsigned long)m;
    if (fd >= 0) close(fd);
}

static void do_proc(struct op *o, struct reply *r) {
    static char buf[65536];
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", o->pid, o->text);
    int fd = open(path, O_RDONLY);
    if (fd < 0) { r->err = errno; return; }
    ssize_t n;
    unsigned long total = 0;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += (unsigned long)n;
    if (n < 0) r->err = errno;
    r->ret = total;
    close(fd);
}

static void serve(int t);
static int wait_reply(int t, struct reply *r);

static void task_op(struct op *o, struct reply *r) {
    switch (o->kind) {
    case OP_MMAP: do_mmap(o, r); break;
    case OP_MUNMAP: if (munmap((void *)o->addr, (size_t)o->len)) r->err = errno; break;
    case OP_READ: touch(o, r, 0); break;
    case OP_WRITE: touch(o, r, 1); break;
    case OP_MADVISE: if (madvise((void *)o->addr, (size_t)o->len, o->adv)) r->err = errno; break;
    case OP_MPROTECT: if (mprotect((void *)o->addr, (size_t)o->len, o->prot)) r->err = errno; break;
    case OP_MREMAP: {
        int f = (o->maymove ? MREMAP_MAYMOVE : 0) | (o->fname != -2 ? MREMAP_FIXED | MREMAP_MAYMOVE : 0);
        void *m = mremap((void *)o->addr, (size_t)o->len, (size_t)o->len2, f, (void *)o->fixed);
        if (m == MAP_FAILED) r->err = errno; else r->ret = (unsigned long)m;
        break;
    }
    case OP_FORK: {
        pid_t p = fork();
        if (p < 0) { r->err = errno; break; }
        if (p == 0) serve(o->other);
        r->ret = (unsigned long)p;
        break;
    }
    case OP_PROC: do_proc(o, r); break;
    default: break;
    }
}

/* Fault in the program's own file pages (text, rodata) so that later statements do not
 * move RssShmem/RssFile of the task by running code for the first time. Reads only
 * /proc/self/maps (no page-table walk) and touches only the program's own mappings. */
static void prefault_self(void) {
    static char maps[16384];
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd < 0) return;
    ssize_t n = read(fd, maps, sizeof maps - 1);
    close(fd);
    if (n <= 0) return;
    maps[n] = 0;
    for (char *line = maps; line && *line; ) {
        char *next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (strstr(line, "foliosim-guest")) {
            unsigned long lo, hi;
            if (sscanf(line, "%lx-%lx", &lo, &hi) == 2) madvise((void *)lo, hi - lo, 22 /* MADV_POPULATE_READ */);
        }
        line = next;
    }
}

/* Kernels before 6.2 (SPLIT_RSS_COUNTING) cache RSS changes per task and fold them into
 * the mm only every 64 faults of the task: take 65 read faults on a scratch anonymous
 * mapping (each maps the shared zero page, which is not counted) so that
 * /proc/PID/status shows everything the statement did. Harmless on later kernels. */
static char *scratch;
static void sync_rss(void) {
    if (!scratch) scratch = mmap(NULL, 65 * 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (scratch == MAP_FAILED) return;
    for (int i = 0; i < 65; i++) (void)*(volatile char *)(scratch + i * 4096);
    madvise(scratch, 65 * 4096, MADV_DONTNEED);
}

static void serve(int t) {
    struct reply ready = {0, 0, 0};
    prefault_self();
    sync_rss();
    full_write(repp[t][1], &ready, sizeof ready);
    for (;;) {
        struct op o;
        struct reply r = {0, 0, 0};
        if (full_read(cmdp[t][0], &o, sizeof o)) _exit(0);
        if (o.unbound) r.err = EFAULT; else task_op(&o, &r);
        if (o.kind != OP_EXIT) sync_rss();
        full_write(repp[t][1], &r, sizeof r);
        if (o.kind == OP_EXIT) _exit(0);
    }
}

static int proc_gone(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = 0;
    char *s = strrchr(buf, ')');
    return s && (s[2] == 'Z' || s[2] == 'X');
}

/* Read a reply from task t; if its process dies first (a kernel oops kills it), say so. */
static int wait_reply(int t, struct reply *r) {
    struct pollfd p = {repp[t][0], POLLIN, 0};
    for (;;) {
        int n = poll(&p, 1, 200);
        if (n > 0) return full_read(repp[t][0], r, sizeof *r);
        if (proc_gone(pids[t])) { r->err = -1; r->sig = SIGKILL; return -1; }
    }
}

static void status_rss(pid_t pid, long out[3]) {
    char path[64], buf[4096];
    out[0] = out[1] = out[2] = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = 0;
    const char *keys[3] = {"RssFile:", "RssAnon:", "RssShmem:"};
    for (int i = 0; i < 3; i++) {
        char *s = strstr(buf, keys[i]);
        if (s) out[i] = strtol(s + strlen(keys[i]), NULL, 10);
    }
}

static void drain_kmsg(int line) {
    char rec[8192];
    if (kmsg < 0) return;
    for (;;) {
        ssize_t n = read(kmsg, rec, sizeof rec - 1);
        if (n < 0) { if (errno == EPIPE) continue; break; }
        rec[n] = 0;
        char *msg = strchr(rec, ';');
        if (!msg) continue;
        msg++;
        char *nl = strchr(msg, '\n');
        if (nl) *nl = 0;
        printf("@@K s=%d l=%d %s\n", scen, line, msg);
    }
    fflush(stdout);
}

static void wait_gone(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 400; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) return;
        int fd = open(path, O_RDONLY);
        if (fd < 0) return;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) { buf[n] = 0; char *s = strrchr(buf, ')'); if (s && (s[2] == 'Z' || s[2] == 'X')) return; }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
}

static const char *ename(int e) {
    if (!e) return "0";
    const char *s = strerrorname_np(e);
    return s ? s : "E?";
}

static void observe(struct op *o, struct reply *r, int ntasks, const char *const *tnames) {
    printf("@@O s=%d l=%d e=%s g=%s r=%lx rss=", scen, o->line, ename(r->err),
           r->sig == SIGSEGV ? "SIGSEGV" : r->sig == SIGBUS ? "SIGBUS" : r->sig == SIGKILL ? "KILLED" : r->sig ? "SIG?" : "-", r->ret);
    int first = 1;
    for (int t = 0; t < ntasks; t++) {
        if (!alive[t]) continue;
        long rss[3];
        status_rss(pids[t], rss);
        printf("%s%s:%ld:%ld:%ld", first ? "" : ",", tnames[t], rss[0] - base[t][0],
               rss[1] - base[t][1], rss[2] - base[t][2]);
        first = 0;
    }
    printf("\n");
    fflush(stdout);
    drain_kmsg(o->line);
}

static void global_op(struct op *o, struct reply *r) {
    if (o->kind == OP_FILE) {
        snprintf(paths[o->other], sizeof paths[0], "%s/%s", paths[o->dev], o->text);
        int fd = open(paths[o->other], O_CREAT | O_RDWR | O_TRUNC, 0644);
        if (fd < 0) { r->err = errno; return; }
        if (ftruncate(fd, o->len)) r->err = errno;
        if (o->flags & 1) {
            static char buf[1 << 20];
            memset(buf, 0xaa, sizeof buf);
            fallocate(fd, 0, 0, o->len);
            for (long done = 0; done < o->len; done += (long)sizeof buf) {
                size_t n = (size_t)(o->len - done < (long)sizeof buf ? o->len - done : (long)sizeof buf);
                if (pwrite(fd, buf, n, done) < 0) { r->err = errno; break; }
            }
            fsync(fd);
        }
        close(fd);
    } else if (o->kind == OP_TRUNCATE) {
        if (truncate(paths[o->dev], o->len)) r->err = errno;
    } else if (o->kind == OP_PUNCH) {
        int fd = open(paths[o->dev], O_RDWR);
        if (fd < 0) { r->err = errno; return; }
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o->off, o->len)) r->err = errno;
        close(fd);
    }
}

static unsigned long resolve(int name, long off, int *unbound) {
    if (name == -1) return (unsigned long)off;
    if (name < 0 || !bound[name]) { *unbound = 1; return 0; }
    return names[name] + (unsigned long)off;
}

static int run_scenario(struct op *ops, int nops, int ntasks, const char *const *tnames) {
    for (int t = 0; t < ntasks; t++) {
        if (pipe(cmdp[t]) || pipe(repp[t])) { perror("pipe"); return 1; }
    }
    mlockall(MCL_CURRENT);
    munlockall();
    kmsg = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
    if (kmsg >= 0) lseek(kmsg, 0, SEEK_END);
    printf("@@BEGIN s=%d\n", scen);
    fflush(stdout);
    for (int i = 0; i < nops; i++) {
        struct op *o = &ops[i];
        struct reply r = {0, 0, 0};
        o->unbound = 0;
        if (o->aname != -2) o->addr = resolve(o->aname, o->aoff, &o->unbound);
        if (o->atname != -2) o->at = resolve(o->atname, o->atoff, &o->unbound);
        if (o->fname != -2) o->fixed = resolve(o->fname, o->foff, &o->unbound);
        if (o->other >= 0 && o->other < MAXT) o->pid = (int)pids[o->other];
        if (o->kind == OP_TASK) {
            fflush(stdout);
            pid_t p = fork();
            if (p == 0) serve(o->task);
            pids[o->task] = p;
            alive[o->task] = 1;
            full_read(repp[o->task][0], &r, sizeof r);
            status_rss(p, base[o->task]);
        } else if (o->kind == OP_UNOBSERVABLE) {
            printf("@@U s=%d l=%d\n", scen, o->line);
            continue;
        } else if (o->kind == OP_THP) {
            continue;
        } else if (o->task < 0) {
            global_op(o, &r);
        } else if (!alive[o->task]) {
            r.err = ESRCH;
        } else {
            fflush(stdout);
            full_write(cmdp[o->task][1], o, sizeof *o);
            if (wait_reply(o->task, &r)) { alive[o->task] = 0; }
            if (o->kind == OP_FORK && !r.err) {
                struct reply ready;
                pids[o->other] = (pid_t)r.ret;
                alive[o->other] = 1;
                pids[o->other] = (pid_t)r.ret;
                wait_reply(o->other, &ready);
                memcpy(base[o->other], base[o->task], sizeof base[0]);
            }
            if (o->kind == OP_EXIT) { wait_gone(pids[o->task]); alive[o->task] = 0; }
            if ((o->kind == OP_MMAP || o->kind == OP_MREMAP) && !r.err) { names[o->bind] = r.ret; bound[o->bind] = 1; }
            if ((o->kind == OP_MMAP || o->kind == OP_MREMAP) && r.err) bound[o->bind] = 0;
        }
        observe(o, &r, ntasks, tnames);
    }
    for (int t = 0; t < ntasks; t++) {
        if (!alive[t]) continue;
        struct op o;
        struct reply r;
        memset(&o, 0, sizeof o);
        o.kind = OP_EXIT;
        full_write(cmdp[t][1], &o, sizeof o);
        wait_reply(t, &r);
        wait_gone(pids[t]);
        alive[t] = 0;
    }
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL);
    drain_kmsg(-1);
    printf("@@END s=%d\n", scen);
    fflush(stdout);
    return 0;
}
"""
