/*
 * tap-loop.c: the C baseline for scripts/bench/native.ts. It runs the same loops as the JS side, on
 * an fd it inherits, and prints one JSON line: {"mode":..., "frames":N, "seconds":S, "fps":F}.
 *
 *   tap-loop write  FD HDRLEN FRAMELEN SECONDS  writev(header, frame) to a tap fd, one call per frame
 *   tap-loop read   FD HDRLEN SECONDS           readv(header, 2 KiB buffer) from a nonblocking tap fd
 *   tap-loop uwrite FD HDRLEN FRAMELEN SECONDS [BURST]
 *                                               the same frames as WRITEVs, BURST (default 32, at most
 *                                               256) per io_uring_enter
 *   tap-loop ufed   FD HDRLEN FRAMELEN SECONDS BURST FROM_CPU CPU
 *                                               uwrite's frames, posted by a thread on FROM_CPU into a
 *                                               ring of 256 slots (2 KiB apart, written once) as the
 *                                               harness posts TX buffers: the loop, on CPU, sends what
 *                                               is posted in bursts of at most BURST and gives the
 *                                               slots back. What the handoff between CPUs costs C.
 *   tap-loop uread  FD HDRLEN SECONDS [BURST]   READVs into BURST buffers per io_uring_enter; poll when
 *                                               a whole round found nothing
 *   tap-loop send   FD FRAMELEN SECONDS         sendmmsg bursts of 32 on an AF_PACKET socket (a
 *                                               traffic source for the read loops); SIGTERM ends
 *                                               it early, and it still reports
 *   tap-loop ping   FD HDRLEN HEXFRAME COUNT GAP_US
 *                                               write one frame (an ICMP echo request), poll, read
 *                                               until an ICMP echo reply; COUNT times, GAP_US apart;
 *                                               prints the round trips (µs) as {"rtt":[...]}
 *   tap-loop wake   HOPS COUNT GAP_US           no tap: a token passes main → HOPS threads → main
 *                                               through eventfds (each thread blocks in poll), COUNT
 *                                               times, GAP_US apart; prints {"rtt":[...]}: what a chain
 *                                               of HOPS + 1 thread wake-ups costs on this machine
 *   tap-loop nullsys COUNT                      no tap: COUNT getppid system calls; prints
 *                                               {"nsPerCall":N}: what entering the kernel costs here
 *                                               (page-table isolation and paravirtualisation raise it)
 *
 * The io_uring loops use raw syscalls and a ring set up as lgnet's (native/uring.cc): the tap as
 * registered file 0, restricted to READV/WRITEV, RWF_NOWAIT on every SQE. They are the limit for
 * lgnet's io_uring path, as write/read are for its readv/writev path.
 *
 * Frames carry ethertype 0x88b5 to a locally administered unicast MAC that nothing owns, so the
 * kernel drops them early. Built by the bench at run time: cc -O2 -o .cache/tap-loop tap-loop.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill_frame(unsigned char *f, int len) {
  static const unsigned char head[14] = {0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5};
  memcpy(f, head, sizeof head);
  for (int i = 14; i < len; i++) f[i] = (unsigned char)i;
}

static void report(const char *mode, long long frames, double seconds) {
  printf("{\"mode\":\"%s\",\"frames\":%lld,\"seconds\":%.4f,\"fps\":%.1f}\n", mode, frames, seconds,
         seconds > 0 ? (double)frames / seconds : 0.0);
}

static int do_write(int fd, int hdrlen, int len, double seconds) {
  unsigned char hdr[12] = {0};
  unsigned char frame[65536];
  if (len < 14 || len > (int)sizeof frame || hdrlen < 0 || hdrlen > 12) return 2;
  fill_frame(frame, len);
  struct iovec iov[2] = {{hdr, (size_t)hdrlen}, {frame, (size_t)len}};
  struct iovec *v = hdrlen ? iov : iov + 1;
  int n = hdrlen ? 2 : 1;
  long long frames = 0;
  double t0 = now(), t = t0;
  while (t - t0 < seconds) {
    for (int i = 0; i < 1024; i++) {
      ssize_t r = writev(fd, v, n);
      if (r < 0 && errno != EINTR && errno != EAGAIN) {
        perror("writev");
        return 1;
      }
      if (r > 0) frames++;
    }
    t = now();
  }
  report("write", frames, t - t0);
  return 0;
}

static int do_read(int fd, int hdrlen, double seconds) {
  unsigned char hdr[12];
  unsigned char buf[2048];
  struct iovec iov[2] = {{hdr, (size_t)hdrlen}, {buf, sizeof buf}};
  struct iovec *v = hdrlen ? iov : iov + 1;
  int n = hdrlen ? 2 : 1;
  long long frames = 0;
  double t0 = now(), t = t0;
  unsigned spins = 0;
  while (t - t0 < seconds) {
    ssize_t r = readv(fd, v, n);
    if (r > 0) {
      frames++;
    } else if (r < 0 && errno == EAGAIN) {
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, 100);
    } else if (r < 0 && errno != EINTR) {
      perror("readv");
      return 1;
    }
    if ((++spins & 255) == 0 || r <= 0) t = now();
  }
  report("read", frames, t - t0);
  return 0;
}

/* ---- io_uring, raw syscalls ---------------------------------------------------------------------- */

enum { UBURST = 32, UBURST_MAX = 256 };

struct ring {
  int fd;
  unsigned *sq_tail, sq_mask, *cq_head, *cq_tail, cq_mask;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
};

static int ring_open(struct ring *r, int tap, int burst) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_R_DISABLED | IORING_SETUP_COOP_TASKRUN;
  r->fd = (int)syscall(__NR_io_uring_setup, 2 * burst, &p);
  if (r->fd < 0) return perror("io_uring_setup"), -1;
  size_t sqlen = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  size_t cqlen = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (!(p.features & IORING_FEAT_SINGLE_MMAP)) return fprintf(stderr, "io_uring: no single mmap\n"), -1;
  size_t len = sqlen > cqlen ? sqlen : cqlen;
  unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
  r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
  if (m == MAP_FAILED || r->sqes == MAP_FAILED) return perror("mmap"), -1;
  r->sq_tail = (unsigned *)(m + p.sq_off.tail);
  r->sq_mask = *(unsigned *)(m + p.sq_off.ring_mask);
  unsigned *array = (unsigned *)(m + p.sq_off.array);
  for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i;
  r->cq_head = (unsigned *)(m + p.cq_off.head);
  r->cq_tail = (unsigned *)(m + p.cq_off.tail);
  r->cq_mask = *(unsigned *)(m + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);
  struct io_uring_restriction res[4];
  memset(res, 0, sizeof res);
  res[0].opcode = IORING_RESTRICTION_SQE_OP, res[0].sqe_op = IORING_OP_READV;
  res[1].opcode = IORING_RESTRICTION_SQE_OP, res[1].sqe_op = IORING_OP_WRITEV;
  res[2].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED, res[2].sqe_flags = IOSQE_FIXED_FILE;
  res[3].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED, res[3].sqe_flags = IOSQE_FIXED_FILE;
  if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_FILES, &tap, 1) < 0 ||
      syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_RESTRICTIONS, res, 4) < 0 ||
      syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
    return perror("io_uring_register"), -1;
  return 0;
}

/* n SQEs of op over vecs[i] (nv iovecs each), one enter, all completions into res[]. */
static int ring_burst(struct ring *r, int op, struct iovec (*vecs)[2], int nv, int n, int *res) {
  unsigned tail = *r->sq_tail;
  for (int i = 0; i < n; i++) {
    struct io_uring_sqe *s = &r->sqes[(tail + i) & r->sq_mask];
    memset(s, 0, sizeof *s);
    s->opcode = (unsigned char)op;
    s->flags = IOSQE_FIXED_FILE;
    s->fd = 0;
    s->addr = (unsigned long)(nv == 2 ? vecs[i] : vecs[i] + 1);
    s->len = (unsigned)nv;
    s->rw_flags = RWF_NOWAIT;
    s->user_data = (unsigned)i;
  }
  __atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
  int done = 0, left = n;
  while (done < n) {
    int ret = (int)syscall(__NR_io_uring_enter, r->fd, left, n - done, IORING_ENTER_GETEVENTS, NULL, 0);
    if (ret < 0 && errno != EINTR) return perror("io_uring_enter"), -1;
    if (ret > 0) left -= ret;
    unsigned head = *r->cq_head, t = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != t; head++, done++) res[r->cqes[head & r->cq_mask].user_data] = r->cqes[head & r->cq_mask].res;
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
  }
  return 0;
}

static int do_uwrite(int fd, int hdrlen, int len, double seconds, int burst) {
  static unsigned char hdr[12], frame[65536];
  if (len < 14 || len > (int)sizeof frame || hdrlen < 0 || hdrlen > 12 || burst < 1 || burst > UBURST_MAX) return 2;
  fill_frame(frame, len);
  struct ring r;
  if (ring_open(&r, fd, burst) < 0) return 1;
  struct iovec vecs[UBURST_MAX][2];
  for (int i = 0; i < burst; i++) vecs[i][0] = (struct iovec){hdr, (size_t)hdrlen}, vecs[i][1] = (struct iovec){frame, (size_t)len};
  int res[UBURST_MAX];
  long long frames = 0;
  double t0 = now(), t = t0;
  while (t - t0 < seconds) {
    for (int k = 0; k < 32; k++) {
      if (ring_burst(&r, IORING_OP_WRITEV, vecs, hdrlen ? 2 : 1, burst, res) < 0) return 1;
      for (int i = 0; i < burst; i++) frames += res[i] > 0;
    }
    t = now();
  }
  report("uwrite", frames, t - t0);
  return 0;
}

/* ufed: a producer thread posts slot after slot (a free-running count, as avail.idx) while there is
   room; the loop takes what is posted, sends it, and returns the slots (as used.idx). The frames are
   written once, before the clock starts: only the counts, and the kernel's reads of the slots, cross
   between the two CPUs, as between the harness and lgnet's TX worker in the bench. */
enum { FED_SLOTS = 256, FED_SLOT = 2048 };
static unsigned char fed_slot[FED_SLOTS][FED_SLOT];
static unsigned long long fed_posted, fed_returned;
static int fed_stop;

static void pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) perror("sched_setaffinity");
}

static void *fed_producer(void *arg) {
  pin_self((int)(long)arg);
  unsigned long long posted = 0;
  while (!__atomic_load_n(&fed_stop, __ATOMIC_RELAXED)) {
    if (posted - __atomic_load_n(&fed_returned, __ATOMIC_ACQUIRE) >= FED_SLOTS) continue;
    __atomic_store_n(&fed_posted, ++posted, __ATOMIC_RELEASE);
  }
  return NULL;
}

static int do_ufed(int fd, int hdrlen, int len, double seconds, int burst, int from_cpu, int cpu) {
  if (len < 14 || hdrlen < 0 || hdrlen > 12 || hdrlen + len > FED_SLOT || burst < 1 || burst > UBURST_MAX) return 2;
  pin_self(cpu);
  for (int i = 0; i < FED_SLOTS; i++) memset(fed_slot[i], 0, (size_t)hdrlen), fill_frame(fed_slot[i] + hdrlen, len);
  struct ring r;
  if (ring_open(&r, fd, burst) < 0) return 1;
  pthread_t producer;
  if (pthread_create(&producer, NULL, fed_producer, (void *)(long)from_cpu) != 0) return perror("pthread_create"), 1;
  struct iovec vecs[UBURST_MAX][2];
  int res[UBURST_MAX];
  long long frames = 0;
  unsigned long long taken = 0;
  double t0 = now(), t = t0;
  while (t - t0 < seconds) {
    for (int k = 0; k < 32; k++) {
      unsigned long long ready = __atomic_load_n(&fed_posted, __ATOMIC_ACQUIRE) - taken;
      int n = ready < (unsigned long long)burst ? (int)ready : burst;
      if (n == 0) continue;
      for (int i = 0; i < n; i++) {
        unsigned char *slot = fed_slot[(taken + (unsigned)i) % FED_SLOTS];
        vecs[i][0] = (struct iovec){slot, (size_t)hdrlen};
        vecs[i][1] = (struct iovec){slot + hdrlen, (size_t)len};
      }
      if (ring_burst(&r, IORING_OP_WRITEV, vecs, hdrlen ? 2 : 1, n, res) < 0) return 1;
      for (int i = 0; i < n; i++) frames += res[i] > 0;
      taken += (unsigned)n;
      __atomic_store_n(&fed_returned, taken, __ATOMIC_RELEASE);
    }
    t = now();
  }
  __atomic_store_n(&fed_stop, 1, __ATOMIC_RELAXED);
  pthread_join(producer, NULL);
  report("ufed", frames, t - t0);
  return 0;
}

static int do_uread(int fd, int hdrlen, double seconds, int burst) {
  static unsigned char hdr[UBURST_MAX][12], buf[UBURST_MAX][2048];
  if (burst < 1 || burst > UBURST_MAX) return 2;
  struct ring r;
  if (ring_open(&r, fd, burst) < 0) return 1;
  struct iovec vecs[UBURST_MAX][2];
  for (int i = 0; i < burst; i++) vecs[i][0] = (struct iovec){hdr[i], (size_t)hdrlen}, vecs[i][1] = (struct iovec){buf[i], sizeof buf[i]};
  int res[UBURST_MAX];
  long long frames = 0;
  double t0 = now(), t = t0;
  while (t - t0 < seconds) {
    if (ring_burst(&r, IORING_OP_READV, vecs, hdrlen ? 2 : 1, burst, res) < 0) return 1;
    int got = 0;
    for (int i = 0; i < burst; i++) got += res[i] > 0;
    frames += got;
    if (got == 0) {
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, 100);
    }
    t = now();
  }
  report("uread", frames, t - t0);
  return 0;
}

/* SIGTERM ends a send early: its rate is still reported, over the time it sent. */
static volatile sig_atomic_t send_stop;
static void on_term(int sig) { (void)sig; send_stop = 1; }

static int do_send(int fd, int len, double seconds) {
  enum { BURST = 32 };
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  static unsigned char frame[2048];
  if (len < 14 || len > (int)sizeof frame) return 2;
  fill_frame(frame, len);
  struct iovec iov = {frame, (size_t)len};
  struct mmsghdr msgs[BURST];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BURST; i++) {
    msgs[i].msg_hdr.msg_iov = &iov;
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  long long frames = 0;
  double t0 = now(), t = t0;
  while (t - t0 < seconds && !send_stop) {
    int r = sendmmsg(fd, msgs, BURST, 0);
    if (r > 0) frames += r;
    else if (r < 0 && errno != EINTR && errno != EAGAIN && errno != ENOBUFS) {
      perror("sendmmsg");
      return 1;
    }
    t = now();
  }
  report("send", frames, t - t0);
  return 0;
}

static int hexval(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* The latency floor for scripts/bench/device.ts's ping: one thread, no ring, the same tap. */
static int do_ping(int fd, int hdrlen, const char *hex, int count, int gap_us) {
  static unsigned char hdr[64], frame[2048], buf[65600];
  int len = (int)strlen(hex) / 2;
  if (len < 42 || len > (int)sizeof frame || hdrlen > (int)sizeof hdr || count <= 0) return 2;
  for (int i = 0; i < len; i++) frame[i] = (unsigned char)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
  memset(hdr, 0, sizeof hdr);
  struct iovec out[2] = {{hdr, (size_t)hdrlen}, {frame, (size_t)len}};
  struct iovec in[2] = {{hdr, (size_t)hdrlen}, {buf, sizeof buf}};
  printf("{\"mode\":\"ping\",\"rtt\":[");
  for (int i = 0; i < count; i++) {
    double t0 = now(), deadline = t0 + 1.0;
    if (writev(fd, hdrlen ? out : out + 1, hdrlen ? 2 : 1) < 0) return 1;
    int got = 0;
    while (!got && now() < deadline) {
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, 100);
      ssize_t n;
      while (!got && (n = readv(fd, hdrlen ? in : in + 1, hdrlen ? 2 : 1)) > 0) {
        /* IPv4 (0x0800), ICMP (1), echo reply (type 0) */
        if (n - hdrlen >= 42 && buf[12] == 8 && buf[13] == 0 && buf[23] == 1 && buf[34] == 0) got = 1;
      }
    }
    double rtt = (now() - t0) * 1e6;
    printf("%s%.1f", i ? "," : "", got ? rtt : -1.0);
    struct timespec gap = {gap_us / 1000000, (long)(gap_us % 1000000) * 1000};
    nanosleep(&gap, NULL);
  }
  printf("]}\n");
  return 0;
}

enum { MAX_HOPS = 8 };
static int wake_fd[MAX_HOPS + 1];

static void *wake_relay(void *arg) {
  long i = (long)arg;
  uint64_t v;
  for (;;) {
    struct pollfd p = {wake_fd[i], POLLIN, 0};
    poll(&p, 1, -1);
    if (read(wake_fd[i], &v, sizeof v) != sizeof v) continue;
    v = 1;
    if (write(wake_fd[i + 1], &v, sizeof v) != sizeof v) return NULL;
  }
}

/* The cost of the thread wake-ups alone, for the ping case: lgnet's echo crosses more threads than QEMU's. */
static int do_wake(int hops, int count, int gap_us) {
  if (hops < 1 || hops > MAX_HOPS || count <= 0) return 2;
  for (int i = 0; i <= hops; i++)
    if ((wake_fd[i] = eventfd(0, EFD_CLOEXEC)) < 0) return 1;
  for (long i = 0; i < hops; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, wake_relay, (void *)i) != 0) return 1;
    pthread_detach(t);
  }
  printf("{\"mode\":\"wake\",\"hops\":%d,\"rtt\":[", hops);
  for (int k = 0; k < count; k++) {
    uint64_t v = 1;
    double t0 = now();
    if (write(wake_fd[0], &v, sizeof v) != sizeof v) return 1;
    struct pollfd p = {wake_fd[hops], POLLIN, 0};
    int got = poll(&p, 1, 1000) == 1 && read(wake_fd[hops], &v, sizeof v) == sizeof v;
    printf("%s%.1f", k ? "," : "", got ? (now() - t0) * 1e6 : -1.0);
    struct timespec gap = {gap_us / 1000000, (long)(gap_us % 1000000) * 1000};
    nanosleep(&gap, NULL);
  }
  printf("]}\n");
  return 0;
}

static int do_nullsys(long count) {
  double t0 = now();
  for (long i = 0; i < count; i++) syscall(SYS_getppid);
  printf("{\"mode\":\"nullsys\",\"calls\":%ld,\"nsPerCall\":%.1f}\n", count, (now() - t0) * 1e9 / (double)count);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 6 && strcmp(argv[1], "write") == 0)
    return do_write(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
  if (argc >= 5 && strcmp(argv[1], "read") == 0) return do_read(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
  if (argc >= 5 && strcmp(argv[1], "wake") == 0) return do_wake(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (argc >= 7 && strcmp(argv[1], "ping") == 0) return do_ping(atoi(argv[2]), atoi(argv[3]), argv[4], atoi(argv[5]), atoi(argv[6]));
  if (argc >= 5 && strcmp(argv[1], "send") == 0) return do_send(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
  if (argc >= 6 && strcmp(argv[1], "uwrite") == 0)
    return do_uwrite(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]), argc >= 7 ? atoi(argv[6]) : UBURST);
  if (argc >= 9 && strcmp(argv[1], "ufed") == 0)
    return do_ufed(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]), atoi(argv[6]), atoi(argv[7]), atoi(argv[8]));
  if (argc >= 5 && strcmp(argv[1], "uread") == 0) return do_uread(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), argc >= 6 ? atoi(argv[5]) : UBURST);
  if (argc >= 3 && strcmp(argv[1], "nullsys") == 0) return do_nullsys(atol(argv[2]));
  fprintf(stderr, "usage: tap-loop write|uwrite FD HDRLEN FRAMELEN SECONDS [BURST] | ufed FD HDRLEN FRAMELEN SECONDS BURST FROM_CPU CPU | read|uread FD HDRLEN SECONDS [BURST] | send FD FRAMELEN SECONDS | nullsys COUNT\n");
  return 2;
}
