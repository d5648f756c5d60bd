/*
 * seccomp-cost: what lgnet's seccomp filters add to each system call a queue worker makes on the frame
 * path. Built and run by scripts/bench/jail.ts (the jail step of npm run bench); not part of lgnet.
 *
 *   seccomp-cost MAIN WORKER RINGFD CALLS BLOCKS ROUNDS
 *
 * MAIN and WORKER are files holding compiled filters (struct sock_filter[], as compilePolicy returns
 * them), compiled with RINGFD as lgnet's io_uring ring. Each round is a fresh process with three
 * threads on one CPU: one bare ("off"), one that installs both filters on itself as a jailed queue
 * worker has them ("on": the process-wide one, then the worker's), and a second bare one ("ctl"),
 * whose difference from "off" is the method's own noise. They take turns, BLOCKS times each, each turn
 * timing CALLS/BLOCKS calls of every system call below, so that the machine's drift falls on all.
 * A round prints three lines, "off|on|ctl ROUND name ns-per-call ...". A call the filter refuses
 * fails the run, so a figure is always of an allowed call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct sock_fprog load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(2); }
  static struct sock_filter buf[2][8192];
  static int which = 0;
  size_t n = fread(buf[which], sizeof(struct sock_filter), 8192, f);
  fclose(f);
  if (n == 0 || n >= 8192) { fprintf(stderr, "%s: %zu instructions\n", path, n); exit(2); }
  struct sock_fprog p = {.len = (unsigned short)n, .filter = buf[which++]};
  return p;
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

enum { K_GETPID, K_IO_URING_ENTER, K_WRITEV, K_WRITE, K_READ, K_PPOLL, K_FUTEX, K_READV, K_COUNT };
static const char *const NAMES[K_COUNT] = {"getpid", "io_uring_enter", "writev", "write", "read", "ppoll", "futex", "readv"};

struct fds { int ring, efd, null, zero; };
static int futex_word;

/* One call of kind k; returns its result (a negative errno as -1 with errno set, as syscall() does). */
static long call(int k, const struct fds *f) {
  static char data[64];
  static struct iovec iov = {data, sizeof data};
  static const struct timespec zero = {0, 0};
  uint64_t v = 1;
  switch (k) {
  case K_GETPID: return syscall(SYS_getpid);
  case K_IO_URING_ENTER: return syscall(SYS_io_uring_enter, f->ring, 0, 0, 0, NULL, 0);
  case K_WRITEV: return syscall(SYS_writev, f->null, &iov, 1);
  case K_WRITE: return syscall(SYS_write, f->efd, &v, 8);
  case K_READ: return syscall(SYS_read, f->efd, &v, 8); /* the counter is non-zero: K_WRITE ran first */
  case K_PPOLL: {
    struct pollfd p = {f->efd, POLLIN, 0};
    return syscall(SYS_ppoll, &p, 1, &zero, NULL, 8);
  }
  case K_FUTEX: return syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  case K_READV: return syscall(SYS_readv, f->zero, &iov, 1); /* RX on the readv/writev path */
  }
  return -1;
}

#define SIDES 3
static const char *const SIDE_NAMES[SIDES] = {"off", "on", "ctl"};

/* One thread of a round: bare, or under both filters (installed on this thread alone, as a queue worker's are). */
struct side {
  int id, on;
  long calls, blocks;
  const struct fds *f;
  struct sock_fprog *progs;
  pthread_barrier_t *bar;
  double ns[K_COUNT]; /* summed over the blocks */
  int failed;
};

static void *run_side(void *arg) {
  struct side *s = arg;
  if (s->on) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) s->failed = 1;
    for (int i = 0; i < 2 && !s->failed; i++) {
      if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &s->progs[i]) < 0) s->failed = 1;
    }
  }
  for (int k = 0; k < K_COUNT; k++) {
    for (long i = 0; i < s->calls / s->blocks; i++) call(k, s->f); /* warm */
  }
  /* Turns: in block b, one side at a time times every call kind while the others wait at the
     barrier; the order rotates with b. */
  for (long b = 0; b < s->blocks; b++) {
    for (int turn = 0; turn < SIDES; turn++) {
      pthread_barrier_wait(s->bar);
      if ((b + turn) % SIDES != s->id || s->failed) continue;
      for (int k = 0; k < K_COUNT; k++) {
        long n = s->calls / s->blocks;
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
          if (call(k, s->f) < 0 && errno != EAGAIN) {
            fprintf(stderr, "%s: %s (%s)\n", NAMES[k], strerror(errno), s->on ? "filtered" : "bare");
            s->failed = 1;
            break;
          }
        }
        s->ns[k] += now_ns() - t0;
      }
    }
  }
  return NULL;
}

/* One round: a fresh process, the sides as threads on one CPU, taking turns. */
static void child(int round, int ringfd, long calls, long blocks, struct sock_fprog *progs) {
  struct fds f;
  struct io_uring_params params;
  memset(&params, 0, sizeof params);
  int ring = (int)syscall(SYS_io_uring_setup, 4, &params);
  if (ring < 0) { perror("io_uring_setup"); _exit(3); }
  if (dup2(ring, ringfd) < 0) { perror("dup2"); _exit(3); }
  close(ring);
  f.ring = ringfd;
  f.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  f.null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  f.zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
  if (f.efd < 0 || f.null < 0 || f.zero < 0) { perror("eventfd, /dev/null or /dev/zero"); _exit(3); }
  /* Both threads on the CPU this round started on: neither side gets another CPU's caches. */
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  sched_setaffinity(0, sizeof one, &one);
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, SIDES);
  struct side sides[SIDES];
  pthread_t th[SIDES];
  for (int i = 0; i < SIDES; i++) {
    sides[i] = (struct side){.id = i, .on = i == 1, .calls = calls, .blocks = blocks, .f = &f, .progs = progs, .bar = &bar};
    if (pthread_create(&th[i], NULL, run_side, &sides[i]) != 0) { perror("pthread_create"); _exit(3); }
  }
  for (int i = 0; i < SIDES; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < SIDES; i++) {
    if (sides[i].failed) _exit(4);
    printf("%s %d", SIDE_NAMES[i], round);
    for (int k = 0; k < K_COUNT; k++) printf(" %s %.2f", NAMES[k], sides[i].ns[k] / (double)(calls / blocks * blocks));
    printf("\n");
  }
  fflush(stdout);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s MAIN WORKER RINGFD CALLS BLOCKS ROUNDS\n", argv[0]);
    return 2;
  }
  struct sock_fprog progs[2] = {load(argv[1]), load(argv[2])};
  int ringfd = atoi(argv[3]);
  long calls = atol(argv[4]);
  long blocks = atol(argv[5]);
  int rounds = atoi(argv[6]);
  if (blocks < 1 || calls < blocks) { fprintf(stderr, "CALLS must be at least BLOCKS, and BLOCKS at least 1\n"); return 2; }
  for (int r = 0; r < rounds; r++) {
    fflush(stdout);
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 3; }
    if (p == 0) child(r, ringfd, calls, blocks, progs);
    int st = 0;
    if (waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "round %d: child failed (status %d)\n", r, st);
      return 1;
    }
  }
  return 0;
}
