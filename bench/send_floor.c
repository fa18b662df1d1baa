/* The kernel floor of sending 1200-byte UDP datagrams on loopback.
 *
 * Usage: send_floor PATTERN DATAGRAMS MAX_SECONDS
 *   A  200 sender sockets, each to its own receiver, sendmmsg with 1 message
 *   B  the same with sendto()
 *   C  1 sender socket, sendmmsg with 200 messages (one per receiver)
 *   D  1 sender socket, sendmmsg with 32 messages to one receiver
 *      (the receiver changes from call to call, so all 200 are fed alike)
 *   E  as A, each sender socket connect()ed to its receiver: no address per
 *      message, the route kept by the socket (the native engine's legs)
 *   F  as E, one message of SEGMENTS datagrams with UDP_SEGMENT (UDP GSO) per
 *      call: a video frame's packets to one subscriber, as the engine sends them
 *   G  as E with send(): one datagram, no message header to copy in
 *
 * 200 receiver sockets on 127.0.0.1 are drained by a forked child (epoll +
 * recvmmsg). The sender never runs more than WINDOW datagrams ahead of what
 * the child has read (a shared counter; it sleeps when ahead), so receive
 * buffers do not overflow. Both report their own CPU time (getrusage) over the
 * run; the sender prints one JSON line. Destinations are given per message
 * (msg_name), sends use MSG_DONTWAIT, as the relay does.
 *
 * Built and run by bench/send_floor.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PEERS 200
#define SIZE 1200
#define BATCH_D 32
#define RECV_BATCH 64
#define WINDOW (32 * PEERS)   /* datagrams in flight, about 32 per receiver */
#define SEGMENTS 4            /* pattern F: datagrams per UDP GSO message */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define RCVBUF (4 << 20)

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_us(const struct timeval *tv)
{
    return (double)tv->tv_sec * 1e6 + (double)tv->tv_usec;
}

static int udp_socket(struct sockaddr_in *bound)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        die("socket");
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        die("bind");
    }
    socklen_t len = sizeof *bound;
    if (getsockname(fd, (struct sockaddr *)bound, &len) < 0) {
        die("getsockname");
    }
    return fd;
}

/* The child: read every receiver until `stop` is readable, then drain once
 * more and write {datagrams, user µs, system µs} to `out`. */
static void receive(const int *fds, int stop, int out, volatile unsigned long *received)
{
    int ep = epoll_create1(0);
    if (ep < 0) {
        die("epoll_create1");
    }
    for (int i = 0; i <= PEERS; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, i < PEERS ? fds[i] : stop, &ev) < 0) {
            die("epoll_ctl");
        }
    }
    static char bufs[RECV_BATCH][SIZE];
    struct iovec iov[RECV_BATCH];
    struct mmsghdr msgs[RECV_BATCH];
    for (int i = 0; i < RECV_BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = SIZE};
        msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
    }
    struct rusage start, end;
    getrusage(RUSAGE_SELF, &start);
    unsigned long count = 0;
    int stopping = 0;
    while (!stopping) {
        struct epoll_event events[64];
        int n = epoll_wait(ep, events, 64, 1000);
        for (int e = 0; e < n; e++) {
            if (events[e].data.u32 == PEERS) {
                stopping = 1;
                continue;
            }
            int got = recvmmsg(fds[events[e].data.u32], msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
            if (got > 0) {
                count += (unsigned long)got;
                __atomic_store_n(received, count, __ATOMIC_RELEASE);
            }
        }
    }
    for (int i = 0; i < PEERS; i++) { /* what arrived before `stop` */
        int got;
        while ((got = recvmmsg(fds[i], msgs, RECV_BATCH, MSG_DONTWAIT, NULL)) > 0) {
            count += (unsigned long)got;
        }
    }
    getrusage(RUSAGE_SELF, &end);
    double result[3] = {(double)count, cpu_us(&end.ru_utime) - cpu_us(&start.ru_utime),
                        cpu_us(&end.ru_stime) - cpu_us(&start.ru_stime)};
    if (write(out, result, sizeof result) != (ssize_t)sizeof result) {
        die("write");
    }
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc != 4 || strlen(argv[1]) != 1 || strchr("ABCDEFG", argv[1][0]) == NULL) {
        fprintf(stderr, "usage: %s A|B|C|D|E|F|G DATAGRAMS MAX_SECONDS\n", argv[0]);
        return 2;
    }
    char pattern = argv[1][0];
    unsigned long target = strtoul(argv[2], NULL, 10);
    double max_seconds = atof(argv[3]);

    int rx[PEERS];
    struct sockaddr_in rx_addr[PEERS];
    for (int i = 0; i < PEERS; i++) {
        rx[i] = udp_socket(&rx_addr[i]);
        int size = RCVBUF;
        if (setsockopt(rx[i], SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0) {
            setsockopt(rx[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        }
    }
    int connected = pattern == 'E' || pattern == 'F' || pattern == 'G';
    int senders = pattern == 'A' || pattern == 'B' || connected ? PEERS : 1;
    int tx[PEERS];
    for (int i = 0; i < senders; i++) {
        struct sockaddr_in unused;
        tx[i] = udp_socket(&unused);
        if (connected && connect(tx[i], (struct sockaddr *)&rx_addr[i], sizeof rx_addr[i]) < 0) {
            die("connect");
        }
    }

    volatile unsigned long *received = mmap(NULL, sizeof *received, PROT_READ | PROT_WRITE,
                                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (received == MAP_FAILED) {
        die("mmap");
    }
    int stop[2], result[2];
    if (pipe(stop) < 0 || pipe(result) < 0) {
        die("pipe");
    }
    pid_t child = fork();
    if (child < 0) {
        die("fork");
    }
    if (child == 0) {
        close(stop[1]);
        close(result[0]);
        receive(rx, stop[0], result[1], received);
    }
    close(stop[0]);
    close(result[1]);

    /* Messages: the same payload; pattern C sends to every receiver in one call,
     * the others fill msgs[0..] and point msg_name at the current receiver. */
    static char payload[SIZE];
    memset(payload, 0x5a, sizeof payload);
    struct iovec iov = {.iov_base = payload, .iov_len = SIZE};
    struct mmsghdr msgs[PEERS];
    for (int i = 0; i < PEERS; i++) {
        msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_name = &rx_addr[i],
                                               .msg_namelen = sizeof rx_addr[i],
                                               .msg_iov = &iov,
                                               .msg_iovlen = 1}};
    }
    struct mmsghdr unnamed[PEERS]; /* pattern E: the socket is connected */
    for (int i = 0; i < PEERS; i++) {
        unnamed[i] = msgs[i];
        unnamed[i].msg_hdr.msg_name = NULL;
        unnamed[i].msg_hdr.msg_namelen = 0;
    }
    /* pattern F: SEGMENTS copies of the payload in one message, cut by the kernel */
    struct iovec segments[SEGMENTS];
    for (int i = 0; i < SEGMENTS; i++) {
        segments[i] = iov;
    }
    union {
        char bytes[CMSG_SPACE(sizeof(uint16_t))];
        size_t align;
    } control;
    struct msghdr segmented = {.msg_iov = segments, .msg_iovlen = SEGMENTS,
                               .msg_control = control.bytes,
                               .msg_controllen = sizeof control.bytes};
    struct cmsghdr *header = CMSG_FIRSTHDR(&segmented);
    header->cmsg_level = SOL_UDP;
    header->cmsg_type = UDP_SEGMENT;
    header->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t segment_size = SIZE;
    memcpy(CMSG_DATA(header), &segment_size, sizeof segment_size);
    struct mmsghdr batch[BATCH_D];
    for (int i = 0; i < BATCH_D; i++) {
        batch[i] = msgs[0];
    }

    unsigned long sent = 0, calls = 0, waits = 0, errors = 0;
    int peer = 0;
    struct rusage start, end;
    double began = now(), deadline = began + max_seconds;
    getrusage(RUSAGE_SELF, &start);
    while (sent < target) {
        if ((calls & 63) == 0 && now() > deadline) {
            break;
        }
        /* Stay within WINDOW of the receiver (bounded: the deadline applies). */
        while (sent - __atomic_load_n(received, __ATOMIC_ACQUIRE) > WINDOW && now() < deadline) {
            struct timespec nap = {0, 20000};
            nanosleep(&nap, NULL);
            waits++;
        }
        int n;
        switch (pattern) {
        case 'A':
            n = sendmmsg(tx[peer], &msgs[peer], 1, MSG_DONTWAIT);
            break;
        case 'B':
            n = sendto(tx[peer], payload, SIZE, MSG_DONTWAIT, (struct sockaddr *)&rx_addr[peer],
                       sizeof rx_addr[peer]) == SIZE ? 1 : -1;
            break;
        case 'C':
            n = sendmmsg(tx[0], msgs, PEERS, MSG_DONTWAIT);
            break;
        case 'E':
            n = sendmmsg(tx[peer], &unnamed[peer], 1, MSG_DONTWAIT);
            break;
        case 'F':
            n = sendmsg(tx[peer], &segmented, MSG_DONTWAIT) == SEGMENTS * SIZE ? SEGMENTS : -1;
            break;
        case 'G':
            n = send(tx[peer], payload, SIZE, MSG_DONTWAIT) == SIZE ? 1 : -1;
            break;
        default:
            for (int i = 0; i < BATCH_D; i++) {
                batch[i].msg_hdr.msg_name = &rx_addr[peer];
            }
            n = sendmmsg(tx[0], batch, BATCH_D, MSG_DONTWAIT);
            break;
        }
        calls++;
        if (n > 0) {
            sent += (unsigned long)n;
        } else {
            errors++;
        }
        peer = (peer + 1) % PEERS;
    }
    getrusage(RUSAGE_SELF, &end);
    double elapsed = now() - began;

    /* Let the child catch up (bounded), then stop it. */
    for (int i = 0; i < 200 && __atomic_load_n(received, __ATOMIC_ACQUIRE) < sent; i++) {
        usleep(5000);
    }
    if (write(stop[1], "x", 1) != 1) {
        die("write");
    }
    double rx_result[3];
    if (read(result[0], rx_result, sizeof rx_result) != (ssize_t)sizeof rx_result) {
        die("read");
    }
    waitpid(child, NULL, 0);

    printf("{\"pattern\": \"%c\", \"sent\": %lu, \"calls\": %lu, \"errors\": %lu, \"waits\": %lu, "
           "\"seconds\": %.3f, \"user_us\": %.0f, \"system_us\": %.0f, "
           "\"received\": %.0f, \"rx_user_us\": %.0f, \"rx_system_us\": %.0f}\n",
           pattern, sent, calls, errors, waits, elapsed,
           cpu_us(&end.ru_utime) - cpu_us(&start.ru_utime),
           cpu_us(&end.ru_stime) - cpu_us(&start.ru_stime), rx_result[0], rx_result[1],
           rx_result[2]);
    return 0;
}
