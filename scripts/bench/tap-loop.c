/*
 * tap-loop.c: the C baseline for scripts/bench/native.ts. It runs the same loops as the JS side, on
 * an fd it inherits, and prints one JSON line: {"mode":..., "frames":N, "seconds":S, "fps":F}.
 *
 *   tap-loop write FD HDRLEN FRAMELEN SECONDS   writev(header, frame) to a tap fd, one call per frame
 *   tap-loop read  FD HDRLEN SECONDS            readv(header, 2 KiB buffer) from a nonblocking tap fd
 *   tap-loop send  FD FRAMELEN SECONDS          sendmmsg bursts of 32 on an AF_PACKET socket (a
 *                                               traffic source for the read loops)
 *
 * Frames carry ethertype 0x88b5 to a locally administered unicast MAC that nothing owns, so the
 * kernel drops them early. Built by the bench at run time: cc -O2 -o .cache/tap-loop tap-loop.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

static int do_send(int fd, int len, double seconds) {
  enum { BURST = 32 };
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
  while (t - t0 < seconds) {
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

int main(int argc, char **argv) {
  if (argc >= 6 && strcmp(argv[1], "write") == 0)
    return do_write(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
  if (argc >= 5 && strcmp(argv[1], "read") == 0) return do_read(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
  if (argc >= 5 && strcmp(argv[1], "send") == 0) return do_send(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
  fprintf(stderr, "usage: tap-loop write FD HDRLEN FRAMELEN SECONDS | read FD HDRLEN SECONDS | send FD FRAMELEN SECONDS\n");
  return 2;
}
