/* The relay's media sockets in C (docs/native.md, step 3): batched receive and
 * send, SRTP per participant leg, and everything that is not media handed up
 * to Python.
 *
 * Python owns each socket (it binds it, conclave/ice.py) and registers it
 * here with the aioice protocol that answers ICE. The engine watches its
 * sockets with an epoll descriptor of its own (Engine.fileno), and the event
 * loop calls Engine.poll() when that is readable; each ready socket is drained
 * with recvmmsg, a batch per system call:
 *
 *   - SRTP/SRTCP (first byte 128-191) from a keyed leg's remote address is
 *     unprotected here; RTCP goes up to the leg's on_rtcp, RTP to its on_rtp;
 *   - everything else (STUN, DTLS, media before the leg has keys, datagrams
 *     from other addresses) goes up to protocol.datagram_received(data, addr),
 *     as an asyncio datagram transport would deliver it.
 *
 * Packets a leg sends are protected in place in a slot of its socket's send
 * queue; queues are flushed with sendmmsg at the end of a batch, or at once
 * when nothing is being received (a send from a Python timer). On a connected
 * socket, a run of queued datagrams of one size (a video frame's packets) is one
 * message with UDP_SEGMENT (UDP GSO): the kernel routes and builds one buffer
 * and cuts it into datagrams at the end, for about half of what separate
 * datagrams cost it.
 *
 * One event loop owns an Engine: nothing here is thread-safe, and the GIL is
 * held throughout (every call is short and never blocks: the sockets are
 * non-blocking).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "forward.h"
#include "module.h"
#include "reception.h"
#include "srtp.h"

#define BATCH 32           /* datagrams per recvmmsg / sendmmsg call */
#define READ_BUDGET 512    /* datagrams read from one socket per drain: the loop has others */
#define POLL_EVENTS 64     /* ready sockets one poll() call takes */
#define SLOT_SIZE NATIVE_SRTP_BUFFER_SIZE
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103    /* linux/udp.h; Linux 4.18 */
#endif
#define SEGMENTED_MAX_BYTES 60000 /* one UDP GSO send, well inside 64 KiB with headers */

/* What a datagram that is dropped here was; indexes of Engine.dropped. */
enum drop_reason {
    DROP_SRTP,        /* unprotect failed: forged, replayed, or keyed differently */
    DROP_SEND_FULL,   /* the socket's send buffer was full */
    DROP_SEND_ERROR,  /* sendmmsg failed otherwise (e.g. ICMP unreachable) */
    DROP_TOO_LARGE,   /* a packet to send over NATIVE_SRTP_MAX_PACKET */
    DROP_PROTECT,     /* protect failed */
    DROP_NO_LEG,      /* a subscriber's packet found its leg gone */
    DROP_REASONS
};

static const char *const drop_names[DROP_REASONS] = {
    "srtp", "send_full", "send_error", "too_large", "protect", "no_leg",
};

#define MAX_BINDINGS 8      /* SSRCs one participant sends: sources x layers */
#define MAX_NACKED 64       /* sequence numbers one NACK names at most */

/* An SSRC a leg's participant sends, bound by Python to the track and layer it
 * belongs to, and what the relay keeps about it per packet (what
 * relay/peer.py's IncomingStream keeps on the Python path). */
typedef struct {
    uint32_t ssrc;
    PyObject *track;            /* strong: relay._native.Track */
    int layer;
    int payload_type;           /* the one Python saw; another goes up to it */
    int audio_level_id;         /* 0: no audio level to read */
    reception_stats_t stats;
    missing_t *missing;         /* video only, else NULL */
    level_sum_t levels;         /* since Python last took them */
} binding_t;

typedef struct LegObject LegObject;

/* The keyed legs of one socket, by remote address: open addressing with linear
 * probing, a power-of-two capacity at most half full. A socket of its own per
 * participant holds one leg; a shared port (conclave/shared_port.py) holds every
 * participant's that ICE selected on it. */
typedef struct {
    LegObject **slots;          /* strong; NULL: empty */
    size_t mask;                /* capacity - 1; 0 with no slots yet */
    size_t count;
} leg_table_t;

/* One registered socket and its send queue. */
typedef struct {
    PyObject_HEAD
    /* What every queued and flushed datagram reads, in the object's first cache
     * line: with hundreds of subscribers each socket is cold when its turn comes. */
    int fd;
    int open;                   /* 0 once removed: stop touching it */
    int queued;                 /* messages waiting in out[] */
    int dirty;                  /* on the engine's list of sockets to flush */
    int segment;                /* send runs with UDP_SEGMENT; 0 once the kernel refused */
    int connected;              /* connect()ed to `peer` by open_leg; never undone: a
                                   socket bound to port 0 would lose its port */
    PyObject *protocol;         /* what gets datagram_received: aioice's StunProtocol,
                                   or a shared port's demultiplexer */
    leg_table_t legs;
    struct sockaddr_storage peer;
    struct mmsghdr out[BATCH];
    struct iovec out_iov[BATCH];
    struct sockaddr_storage out_addr[BATCH]; /* copied: a leg may go before the flush */
    uint8_t out_buf[BATCH][SLOT_SIZE];
    /* out[] regrouped into runs, one message each (send_runs) */
    struct mmsghdr runs[BATCH];
    int run_first[BATCH];       /* index in out[] of each run's first datagram */
    int run_count[BATCH];
    union {
        char bytes[CMSG_SPACE(sizeof(uint16_t))];
        size_t align;           /* what struct cmsghdr needs */
    } run_control[BATCH];
} SocketObject;

typedef struct {
    PyObject_HEAD
    SocketObject **by_fd;       /* registered sockets, indexed by fd */
    int by_fd_size;
    SocketObject **to_flush;    /* sockets with queued messages (dirty) */
    int to_flush_count;
    int to_flush_size;
    int receiving;              /* >0 while poll() or readable() runs: sends are queued */
    int segment;                /* new sockets may send with UDP_SEGMENT (Engine(segment=)) */
    int epoll_fd;               /* every registered socket; the loop watches only this */
    /* the receive batch, shared by every socket */
    struct mmsghdr in[BATCH];
    struct iovec in_iov[BATCH];
    struct sockaddr_storage in_addr[BATCH];
    uint8_t in_buf[BATCH][SLOT_SIZE];
    unsigned long long datagrams_received;
    unsigned long long datagrams_sent;
    unsigned long long datagrams_segmented; /* of those, sent in UDP_SEGMENT runs */
    unsigned long long segment_refused;     /* sockets whose route would not segment */
    unsigned long long upcalls;
    unsigned long long dropped[DROP_REASONS];
    /* RTP handled entirely here (the fast path), as the room counts it */
    unsigned long long rtp_received;
    unsigned long long rtp_received_bytes;
    unsigned long long rtp_forwarded;
    unsigned long long rtp_forwarded_bytes;
    unsigned long long nacks_sent;
    unsigned long long legs_replaced;  /* a leg opened on an address that had one */
} EngineObject;

/* A participant's leg once DTLS is done: the socket, the selected remote
 * address, and the SRTP sessions of both directions. */
struct LegObject {
    PyObject_HEAD
    /* What sending a packet reads, together at the start (see SocketObject). */
    EngineObject *engine;       /* strong */
    SocketObject *socket;       /* strong */
    int open;
    int connected;              /* its socket is connect()ed to `remote` (open_leg): sends
                                   name no address, and the kernel keeps the route */
    unsigned long long sent;
    native_srtp_t tx;
    native_srtp_t rx;
    struct sockaddr_storage remote;
    socklen_t remote_len;
    PyObject *on_rtp;           /* callable(bytes) */
    PyObject *on_rtcp;          /* callable(bytes) */
    int in_table;               /* in its socket's leg table (which holds a reference) */
    uint32_t rtcp_ssrc;         /* the relay's SSRC in the RTCP it sends this leg */
    binding_t bindings[MAX_BINDINGS];
    int binding_count;
    unsigned long long rtp_received;
    unsigned long long rtcp_received;
};

static PyTypeObject SocketType;
static PyTypeObject EngineType;
static PyTypeObject LegType;

/* --- addresses ------------------------------------------------------------ */

/* (host, port) or (host, port, flowinfo, scope_id), as asyncio gives them. */
static PyObject *address_tuple(const struct sockaddr_storage *addr)
{
    char host[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(v4->sin_port));
    }
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(v6->sin6_port),
                             (unsigned int)ntohl(v6->sin6_flowinfo),
                             (unsigned int)v6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* A numeric (host, port, ...) tuple into `out`; -1 with an exception if not. */
static int parse_address(PyObject *tuple, struct sockaddr_storage *out, socklen_t *out_len)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) < 2
        || !PyUnicode_Check(PyTuple_GET_ITEM(tuple, 0))) {
        PyErr_SetString(PyExc_ValueError, "an address is a (host, port) tuple");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(tuple, 0));
    if (host == NULL) {
        return -1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(tuple, 1));
    if (port == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof *out);
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *out_len = sizeof *v4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        if (PyTuple_GET_SIZE(tuple) >= 4) {
            unsigned long scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(tuple, 3));
            if (scope == (unsigned long)-1 && PyErr_Occurred()) {
                return -1;
            }
            v6->sin6_scope_id = (uint32_t)scope;
        }
        *out_len = sizeof *v6;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
    return -1;
}

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) {
        return 0;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port
            && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

/* --- legs by remote address ----------------------------------------------- */

static size_t address_hash(const struct sockaddr_storage *addr)
{
    uint64_t h;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)addr;
        h = (uint64_t)v4->sin_addr.s_addr << 16 | v4->sin_port;
    } else {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)addr;
        uint64_t parts[2];
        memcpy(parts, &v6->sin6_addr, sizeof parts);
        h = (parts[0] ^ parts[1] * 0x9E3779B97F4A7C15ULL) << 16 | v6->sin6_port;
    }
    h *= 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing: the high bits are well mixed */
    return (size_t)(h >> 32);
}

static LegObject *table_find(const leg_table_t *table, const struct sockaddr_storage *addr)
{
    if (table->count == 0) {
        return NULL;
    }
    for (size_t i = address_hash(addr) & table->mask;; i = (i + 1) & table->mask) {
        LegObject *leg = table->slots[i];
        if (leg == NULL) {
            return NULL;
        }
        if (same_address(&leg->remote, addr)) {
            return leg;
        }
    }
}

static void table_place(leg_table_t *table, LegObject *leg)
{
    size_t i = address_hash(&leg->remote) & table->mask;
    while (table->slots[i] != NULL) {
        i = (i + 1) & table->mask;
    }
    table->slots[i] = leg;
}

/* Take a reference to `leg` under its remote address, which has no leg (the
 * caller closed any); -1 with an exception when memory runs out. */
static int table_add(leg_table_t *table, LegObject *leg)
{
    if (2 * (table->count + 1) > table->mask + 1 || table->slots == NULL) {
        size_t capacity = table->slots == NULL ? 4 : 2 * (table->mask + 1);
        LegObject **old = table->slots;
        size_t old_capacity = old == NULL ? 0 : table->mask + 1;
        LegObject **grown = PyMem_Calloc(capacity, sizeof *grown);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        table->slots = grown;
        table->mask = capacity - 1;
        for (size_t i = 0; i < old_capacity; i++) {
            if (old[i] != NULL) {
                table_place(table, old[i]);
            }
        }
        PyMem_Free(old);
    }
    Py_INCREF(leg);
    table_place(table, leg);
    table->count++;
    leg->in_table = 1;
    return 0;
}

/* Take `leg` out (the caller owns the table's reference from then on); the
 * entries after it in its probe run move back to keep every run unbroken. */
static void table_remove(leg_table_t *table, LegObject *leg)
{
    if (!leg->in_table || table->count == 0) {
        return;
    }
    size_t i = address_hash(&leg->remote) & table->mask;
    while (table->slots[i] != leg) {
        if (table->slots[i] == NULL) {
            return;
        }
        i = (i + 1) & table->mask;
    }
    table->slots[i] = NULL;
    table->count--;
    leg->in_table = 0;
    for (size_t j = (i + 1) & table->mask; table->slots[j] != NULL; j = (j + 1) & table->mask) {
        LegObject *moved = table->slots[j];
        size_t home = address_hash(&moved->remote) & table->mask;
        /* `moved` may go to the hole at i unless its home lies in (i, j] */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            table->slots[i] = moved;
            table->slots[j] = NULL;
            i = j;
        }
    }
}

/* RFC 5761 §4: RTCP and RTP on one port are told apart by the second byte. */
static int is_rtcp(const uint8_t *data, size_t len)
{
    return len >= 2 && data[1] >= 192 && data[1] <= 223;
}

/* A file descriptor argument; -1 with an exception if it is not one. */
static int as_fd(PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)fd;
}

/* --- calling up into Python ----------------------------------------------- */

/* Call `callable(*args)` (args is stolen); an exception there is reported as
 * unraisable and forgotten: one bad handler must not stop the batch. */
static void upcall(EngineObject *engine, PyObject *callable, PyObject *args)
{
    if (args == NULL) {
        PyErr_WriteUnraisable(callable);
        return;
    }
    engine->upcalls++;
    PyObject *result = PyObject_CallObject(callable, args);
    Py_DECREF(args);
    if (result == NULL) {
        PyErr_WriteUnraisable(callable);
    } else {
        Py_DECREF(result);
    }
}

/* --- sending -------------------------------------------------------------- */

static void mark_dirty(EngineObject *engine, SocketObject *sock)
{
    if (sock->dirty) {
        return;
    }
    if (engine->to_flush_count == engine->to_flush_size) {
        int size = engine->to_flush_size ? 2 * engine->to_flush_size : 16;
        SocketObject **grown = PyMem_Realloc(engine->to_flush, (size_t)size * sizeof *grown);
        if (grown == NULL) {
            return; /* flushed when its queue fills instead */
        }
        engine->to_flush = grown;
        engine->to_flush_size = size;
    }
    Py_INCREF(sock);
    engine->to_flush[engine->to_flush_count++] = sock;
    sock->dirty = 1;
}

/* Send out[from..queued) one message per datagram; whatever the kernel does not
 * take is dropped and counted (UDP: a full buffer means the network is the
 * bottleneck). */
static void send_each(EngineObject *engine, SocketObject *sock, int start)
{
    while (start < sock->queued) {
        int sent = sendmmsg(sock->fd, sock->out + start, (unsigned int)(sock->queued - start),
                            MSG_DONTWAIT);
        if (sent > 0) {
            engine->datagrams_sent += (unsigned long long)sent;
            start += sent;
            continue;
        }
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            engine->dropped[DROP_SEND_FULL] += (unsigned long long)(sock->queued - start);
            break;
        }
        engine->dropped[DROP_SEND_ERROR]++; /* this message failed: go on with the next */
        start++;
    }
}

/* Regroup out[] into runs: consecutive datagrams to the socket's connected peer
 * (no address named), each the size of its run's first but the last, which may
 * be shorter (what UDP_SEGMENT requires). Returns the number of runs. */
static int group_runs(SocketObject *sock)
{
    int runs = 0;
    for (int first = 0; first < sock->queued; runs++) {
        size_t size = sock->out_iov[first].iov_len, total = size;
        int count = 1;
        if (sock->out[first].msg_hdr.msg_name == NULL) {
            while (first + count < sock->queued) {
                size_t len = sock->out_iov[first + count].iov_len;
                if (sock->out[first + count].msg_hdr.msg_name != NULL || len > size
                    || total + len > SEGMENTED_MAX_BYTES) {
                    break;
                }
                count++;
                total += len;
                if (len < size) {
                    break; /* a shorter datagram ends its run */
                }
            }
        }
        struct msghdr *header = &sock->runs[runs].msg_hdr;
        *header = sock->out[first].msg_hdr;
        header->msg_iov = &sock->out_iov[first]; /* the run's iovecs are consecutive */
        header->msg_iovlen = (size_t)count;
        if (count > 1) {
            header->msg_control = sock->run_control[runs].bytes;
            header->msg_controllen = sizeof sock->run_control[runs].bytes;
            struct cmsghdr *control = CMSG_FIRSTHDR(header);
            control->cmsg_level = SOL_UDP;
            control->cmsg_type = UDP_SEGMENT;
            control->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment_size = (uint16_t)size;
            memcpy(CMSG_DATA(control), &segment_size, sizeof segment_size);
        }
        sock->run_first[runs] = first;
        sock->run_count[runs] = count;
        first += count;
    }
    return runs;
}

/* Send the queue as runs (group_runs), one message per run. Returns the index in
 * out[] from which send_each must go on: `queued` when every run was dealt with,
 * 0 when no run holds two datagrams, or the first datagram of a run the kernel
 * would not segment (no checksum offload on the route, an MTU below the size,
 * a kernel before 4.18): that socket sends datagram by datagram from then on. */
static int send_runs(EngineObject *engine, SocketObject *sock)
{
    int runs = group_runs(sock);
    if (runs == sock->queued) {
        return 0;
    }
    int start = 0;
    while (start < runs) {
        int sent = sendmmsg(sock->fd, sock->runs + start, (unsigned int)(runs - start),
                            MSG_DONTWAIT);
        if (sent > 0) {
            for (int run = start; run < start + sent; run++) {
                int count = sock->run_count[run];
                engine->datagrams_sent += (unsigned long long)count;
                if (count > 1) {
                    engine->datagrams_segmented += (unsigned long long)count;
                }
            }
            start += sent;
            continue;
        }
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        int count = sock->run_count[start];
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            engine->dropped[DROP_SEND_FULL] +=
                (unsigned long long)(sock->queued - sock->run_first[start]);
            break;
        }
        if (sent < 0 && count > 1
            && (errno == EIO || errno == EINVAL || errno == EMSGSIZE || errno == EOPNOTSUPP
                || errno == ENOPROTOOPT)) {
            sock->segment = 0;
            engine->segment_refused++;
            return sock->run_first[start];
        }
        engine->dropped[DROP_SEND_ERROR] += (unsigned long long)count; /* go on with the next */
        start++;
    }
    return sock->queued;
}

/* Send what is queued on `sock`. */
static void flush_socket(EngineObject *engine, SocketObject *sock)
{
    int from = 0;
    if (sock->segment && sock->connected && sock->queued > 1) {
        from = send_runs(engine, sock);
    }
    send_each(engine, sock, from);
    sock->queued = 0;
}

static void flush_all(EngineObject *engine)
{
    for (int i = 0; i < engine->to_flush_count; i++) {
        SocketObject *sock = engine->to_flush[i];
        if (i + 1 < engine->to_flush_count) { /* the send below takes microseconds */
            SocketObject *next = engine->to_flush[i + 1];
            __builtin_prefetch(next);
            __builtin_prefetch(&next->out[0]);
            __builtin_prefetch(&next->out_iov[0]);
        }
        if (sock->open) {
            flush_socket(engine, sock);
        }
        sock->queued = 0;
        sock->dirty = 0;
        Py_DECREF(sock);
    }
    engine->to_flush_count = 0;
}

/* A free send slot of the leg's socket (flushing the queue when it is full):
 * its index, or -1 when the leg cannot send. */
static int take_slot(LegObject *leg)
{
    SocketObject *sock = leg->socket;
    if (!leg->open || !sock->open) {
        return -1;
    }
    if (sock->queued == BATCH) {
        flush_socket(leg->engine, sock);
    }
    return sock->queued;
}

/* Protect the `len` plaintext bytes in slot `slot` and queue them to the leg's
 * remote address; sent at once when the engine is not in a receive batch. */
static int queue_slot(LegObject *leg, int slot, size_t len, int rtcp)
{
    EngineObject *engine = leg->engine;
    SocketObject *sock = leg->socket;
    uint8_t *buf = sock->out_buf[slot];
    size_t out_len = len;
    if (native_srtp_protect(&leg->tx, buf, &out_len, SLOT_SIZE, rtcp) != 0) {
        engine->dropped[DROP_PROTECT]++;
        return -1;
    }
    sock->out_iov[slot].iov_base = buf;
    sock->out_iov[slot].iov_len = out_len;
    struct msghdr *header = &sock->out[slot].msg_hdr;
    memset(header, 0, sizeof *header);
    if (!leg->connected) { /* each message names the address, and the kernel routes it */
        sock->out_addr[slot] = leg->remote;
        header->msg_name = &sock->out_addr[slot];
        header->msg_namelen = leg->remote_len;
    }
    header->msg_iov = &sock->out_iov[slot];
    header->msg_iovlen = 1;
    sock->queued++;
    leg->sent++;
    if (engine->receiving) {
        mark_dirty(engine, sock);
    } else {
        flush_socket(engine, sock);
    }
    return 0;
}

/* Copy `packet` (plaintext RTP or RTCP) into a send slot of the leg's socket,
 * protect it there, and queue it (queue_slot). */
static int leg_send(LegObject *leg, const uint8_t *packet, size_t len)
{
    if (len > NATIVE_SRTP_MAX_PACKET) {
        leg->engine->dropped[DROP_TOO_LARGE]++;
        return -1;
    }
    int slot = take_slot(leg);
    if (slot < 0) {
        return -1;
    }
    memcpy(leg->socket->out_buf[slot], packet, len);
    return queue_slot(leg, slot, len, is_rtcp(packet, len));
}

#define MAX_ANNOUNCED 32  /* first packets to subscribers told per forwarded packet */

/* What emit_to_leg needs, and the subscribers whose sinks are told of their first
 * packet once the forwarder is done (their callbacks may change the track). */
typedef struct {
    EngineObject *engine;
    PyObject *announced[MAX_ANNOUNCED];  /* strong */
    int announced_count;
} forward_context_t;

/* The forwarder's output for one subscriber (native_emit_fn), written straight
 * into a send slot of its leg. */
static int emit_to_leg(void *context, PyObject *subscriber, const OutPacket *packet)
{
    forward_context_t *forwarding = context;
    EngineObject *engine = forwarding->engine;
    LegObject *leg = (LegObject *)native_subscriber_leg(subscriber);
    int slot = leg == NULL ? -1 : take_slot(leg);
    if (slot < 0) {
        engine->dropped[DROP_NO_LEG]++;
        return 1;
    }
    size_t len = native_write_packet(subscriber, packet, leg->socket->out_buf[slot],
                                     NATIVE_SRTP_MAX_PACKET);
    if (len == 0) {
        engine->dropped[DROP_TOO_LARGE]++;
        return 1;
    }
    if (queue_slot(leg, slot, len, 0) < 0) {
        return 1;
    }
    engine->rtp_forwarded++;
    engine->rtp_forwarded_bytes += len;
    if (forwarding->announced_count < MAX_ANNOUNCED && native_subscriber_take_announce(subscriber)) {
        forwarding->announced[forwarding->announced_count++] = Py_NewRef(subscriber);
    }
    return 0;
}

/* Tell each sink of a first packet sent (media_flowing), after the forwarder
 * has finished with its subscriber lists. */
static void announce(forward_context_t *forwarding)
{
    for (int i = 0; i < forwarding->announced_count; i++) {
        PyObject *subscriber = forwarding->announced[i];
        PyObject *sink = native_subscriber_sink(subscriber);
        if (sink != NULL && sink != Py_None) {
            PyObject *result = PyObject_CallMethod(sink, "media_flowing", NULL);
            if (result == NULL) {
                PyErr_WriteUnraisable(sink);
            }
            Py_XDECREF(result);
        }
        Py_DECREF(subscriber);
    }
    forwarding->announced_count = 0;
}

/* Engine.forward's outputs: into the legs of subscribers that have one, as a
 * list of (subscriber, bytes) for the others. */
typedef struct {
    forward_context_t forwarding;
    PyObject *rest;
} mixed_forward_t;

static int emit_to_leg_or_list(void *context, PyObject *subscriber, const OutPacket *packet)
{
    mixed_forward_t *mixed = context;
    if (native_subscriber_leg(subscriber) == NULL) {
        return native_emit_to_list(mixed->rest, subscriber, packet);
    }
    return emit_to_leg(&mixed->forwarding, subscriber, packet);
}

/* --- bindings: what the engine knows of the SSRCs a leg receives ------------ */

static double monotonic_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static uint32_t read32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static binding_t *find_binding(LegObject *leg, uint32_t ssrc)
{
    for (int i = 0; i < leg->binding_count; i++) {
        if (leg->bindings[i].ssrc == ssrc) {
            return &leg->bindings[i];
        }
    }
    return NULL;
}

static void release_binding(binding_t *binding)
{
    Py_CLEAR(binding->track);
    PyMem_Free(binding->missing);
    binding->missing = NULL;
}

/* What the relay keeps per packet of a bound SSRC (relay/peer.py _route_rtp on
 * the Python path): reception statistics, NACKs for new gaps, audio level. */
static void keep_books(EngineObject *engine, LegObject *leg, binding_t *binding,
                       const uint8_t *data, size_t len, double now)
{
    uint16_t sequence = (uint16_t)(data[2] << 8 | data[3]);
    reception_update(&binding->stats, sequence, read32(data + 4), now);
    missing_t *missing = binding->missing;
    if (missing != NULL && (missing_update(missing, sequence) || missing_count(missing))) {
        uint16_t lost[MAX_NACKED];
        size_t count = missing_due(missing, now, lost, MAX_NACKED);
        if (count) {
            uint8_t nack[12 + 4 * MAX_NACKED];
            size_t nack_len = nack_build(leg->rtcp_ssrc, binding->ssrc, lost, count, nack,
                                         sizeof nack);
            if (nack_len && leg_send(leg, nack, nack_len) == 0) {
                engine->nacks_sent++;
            }
        }
    }
    int level;
    if (binding->audio_level_id && audio_level_find(data, len, binding->audio_level_id, &level)) {
        level_sum_add(&binding->levels, level);
    }
}

/* An RTP packet of a keyed leg: 1 when it was handled here (bound, its payload
 * type as bound, the track fast: forwarded to subscribers' legs), 0 when it
 * is Python's (its books are kept here all the same when it is bound). */
static int receive_rtp(EngineObject *engine, LegObject *leg, const uint8_t *data, size_t len)
{
    if (len < 12 || (data[0] >> 6) != 2) {
        return 0;
    }
    binding_t *binding = find_binding(leg, read32(data + 8));
    if (binding == NULL) {
        return 0;
    }
    double now = monotonic_now();
    keep_books(engine, leg, binding, data, len, now);
    if ((data[1] & 0x7F) != binding->payload_type || !native_track_fast(binding->track,
                                                                        binding->layer)) {
        return 0;
    }
    engine->rtp_received++;
    engine->rtp_received_bytes += len;
    PyObject *track = Py_NewRef(binding->track); /* a sink's callback may unbind it */
    int layer = binding->layer;
    forward_context_t forwarding = {.engine = engine, .announced_count = 0};
    if (native_track_forward(track, data, len, layer, now, emit_to_leg, &forwarding) < 0) {
        PyErr_WriteUnraisable(track);
    }
    announce(&forwarding);
    PyObject *tap = Py_XNewRef(native_track_tap(track)); /* the tap may replace itself */
    if (tap != NULL) { /* links take the packet as the publisher sent it */
        upcall(engine, tap, Py_BuildValue("(y#i)", (const char *)data, (Py_ssize_t)len, layer));
        Py_DECREF(tap);
    }
    Py_DECREF(track);
    return 1;
}

/* --- receiving ------------------------------------------------------------ */

/* One datagram of a batch on `sock`. */
static void dispatch(EngineObject *engine, SocketObject *sock, uint8_t *data, size_t len,
                     const struct sockaddr_storage *from)
{
    LegObject *leg = len > 0 && data[0] >= 128 && data[0] <= 191
        ? table_find(&sock->legs, from) : NULL;
    if (leg != NULL && leg->open) {
        int rtcp = is_rtcp(data, len);
        size_t plain_len = len;
        if (native_srtp_unprotect(&leg->rx, data, &plain_len, rtcp) != 0) {
            engine->dropped[DROP_SRTP]++;
            return;
        }
        Py_INCREF(leg); /* the handler may close the leg */
        if (rtcp) {
            leg->rtcp_received++;
            upcall(engine, leg->on_rtcp,
                   Py_BuildValue("(y#)", (const char *)data, (Py_ssize_t)plain_len));
        } else {
            leg->rtp_received++;
            if (!receive_rtp(engine, leg, data, plain_len)) {
                upcall(engine, leg->on_rtp,
                       Py_BuildValue("(y#)", (const char *)data, (Py_ssize_t)plain_len));
            }
        }
        Py_DECREF(leg);
        return;
    }
    PyObject *address = address_tuple(from);
    PyObject *args = address == NULL
        ? NULL
        : Py_BuildValue("(y#N)", (const char *)data, (Py_ssize_t)len, address);
    PyObject *method = PyObject_GetAttrString(sock->protocol, "datagram_received");
    if (method == NULL) {
        Py_XDECREF(args);
        PyErr_WriteUnraisable(sock->protocol);
        return;
    }
    upcall(engine, method, args);
    Py_DECREF(method);
}

static SocketObject *socket_of(EngineObject *engine, int fd)
{
    if (fd < 0 || fd >= engine->by_fd_size) {
        return NULL;
    }
    return engine->by_fd[fd];
}

/* Drain one socket in batches (its budget spent, or nothing left to read). */
static void read_socket(EngineObject *self, SocketObject *sock)
{
    int fd = sock->fd;
    Py_INCREF(sock);
    self->receiving++;
    int budget = READ_BUDGET;
    while (budget > 0 && sock->open) {
        for (int i = 0; i < BATCH; i++) {
            self->in_iov[i].iov_base = self->in_buf[i];
            self->in_iov[i].iov_len = SLOT_SIZE;
            struct msghdr *header = &self->in[i].msg_hdr;
            memset(header, 0, sizeof *header);
            header->msg_name = &self->in_addr[i];
            header->msg_namelen = sizeof self->in_addr[i];
            header->msg_iov = &self->in_iov[i];
            header->msg_iovlen = 1;
        }
        int got = recvmmsg(fd, self->in, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            /* EAGAIN: drained. Or the error an ICMP message left on a connected
             * socket (ECONNREFUSED): reading it clears it, so read on. */
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            budget--;
            continue;
        }
        if (got == 0) {
            break;
        }
        self->datagrams_received += (unsigned long long)got;
        budget -= got;
        for (int i = 0; i < got && sock->open; i++) {
            size_t len = self->in[i].msg_len;
            if (self->in[i].msg_hdr.msg_flags & MSG_TRUNC) {
                continue; /* larger than any packet of ours: not media */
            }
            dispatch(self, sock, self->in_buf[i], len, &self->in_addr[i]);
        }
        if (got < BATCH) {
            break;
        }
    }
    self->receiving--;
    if (self->receiving == 0) {
        flush_all(self);
    }
    Py_DECREF(sock);
}

static PyObject *Engine_readable(EngineObject *self, PyObject *arg)
{
    int fd = as_fd(arg);
    if (fd < 0) {
        return NULL;
    }
    SocketObject *sock = socket_of(self, fd);
    if (sock != NULL) { /* else removed since the loop saw it readable */
        read_socket(self, sock);
    }
    Py_RETURN_NONE;
}

/* The loop watches the engine's epoll descriptor, never a socket: an epoll
 * descriptor is only ever readable, where a socket with an error pending (an
 * ICMP port unreachable on a connected socket) makes uvloop drop its reader.
 * Every socket ready now is drained, and the queues flushed once at the end. */
static PyObject *Engine_poll(EngineObject *self, PyObject *unused)
{
    (void)unused;
    struct epoll_event events[POLL_EVENTS];
    int ready = epoll_wait(self->epoll_fd, events, POLL_EVENTS, 0);
    if (ready <= 0) {
        Py_RETURN_NONE; /* EINTR, or taken by an earlier call */
    }
    self->receiving++;
    for (int i = 0; i < ready; i++) {
        SocketObject *sock = socket_of(self, events[i].data.fd);
        if (sock != NULL) { /* else removed by an upcall of this call */
            read_socket(self, sock);
        }
    }
    self->receiving--;
    if (self->receiving == 0) {
        flush_all(self);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_get_fileno(EngineObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->epoll_fd);
}

/* --- Engine: sockets ------------------------------------------------------ */

static PyObject *Engine_add_socket(EngineObject *self, PyObject *args)
{
    int fd;
    PyObject *protocol;
    if (!PyArg_ParseTuple(args, "iO:add_socket", &fd, &protocol)) {
        return NULL;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    if (socket_of(self, fd) != NULL) {
        PyErr_Format(PyExc_ValueError, "file descriptor %d is registered already", fd);
        return NULL;
    }
    if (fd >= self->by_fd_size) {
        int size = fd + 64;
        SocketObject **grown = PyMem_Realloc(self->by_fd, (size_t)size * sizeof *grown);
        if (grown == NULL) {
            return PyErr_NoMemory();
        }
        memset(grown + self->by_fd_size, 0, (size_t)(size - self->by_fd_size) * sizeof *grown);
        self->by_fd = grown;
        self->by_fd_size = size;
    }
    SocketObject *sock = PyObject_New(SocketObject, &SocketType);
    if (sock == NULL) {
        return NULL;
    }
    sock->fd = fd;
    sock->open = 1;
    memset(&sock->legs, 0, sizeof sock->legs);
    sock->connected = 0;
    sock->queued = 0;
    sock->dirty = 0;
    sock->segment = self->segment;
    Py_INCREF(protocol);
    sock->protocol = protocol;
    struct epoll_event watch = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, fd, &watch) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(sock);
        return NULL;
    }
    self->by_fd[fd] = sock;
    Py_RETURN_NONE;
}

static void close_leg(LegObject *leg);

/* Close every leg of the socket and let go of them and of the table. */
static void release_legs(SocketObject *sock)
{
    leg_table_t *table = &sock->legs;
    for (size_t i = 0; table->slots != NULL && i <= table->mask; i++) {
        LegObject *leg = table->slots[i];
        if (leg != NULL) {
            table->slots[i] = NULL;
            leg->in_table = 0;
            close_leg(leg);
            Py_DECREF(leg);
        }
    }
    PyMem_Free(table->slots);
    memset(table, 0, sizeof *table);
}

static PyObject *Engine_remove_socket(EngineObject *self, PyObject *arg)
{
    int fd = as_fd(arg);
    if (fd < 0) {
        return NULL;
    }
    SocketObject *sock = socket_of(self, fd);
    if (sock == NULL) {
        Py_RETURN_NONE;
    }
    self->by_fd[fd] = NULL;
    (void)epoll_ctl(self->epoll_fd, EPOLL_CTL_DEL, fd, NULL); /* before Python closes it */
    sock->open = 0; /* a batch still holding it stops; its queue is not sent */
    release_legs(sock);
    Py_DECREF(sock);
    Py_RETURN_NONE;
}

static PyObject *Engine_sendto(EngineObject *self, PyObject *args)
{
    int fd;
    Py_buffer data;
    PyObject *address;
    if (!PyArg_ParseTuple(args, "iy*O:sendto", &fd, &data, &address)) {
        return NULL;
    }
    struct sockaddr_storage to;
    socklen_t to_len;
    if (parse_address(address, &to, &to_len) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (socket_of(self, fd) == NULL) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "file descriptor %d is not registered", fd);
        return NULL;
    }
    ssize_t sent;
    do {
        sent = sendto(fd, data.buf, (size_t)data.len, MSG_DONTWAIT, (struct sockaddr *)&to,
                      to_len);
    } while (sent < 0 && errno == EINTR);
    PyBuffer_Release(&data);
    if (sent < 0) {
        /* What asyncio's datagram transport does with a failed send: report it to
         * the protocol (error_received), never raise to the caller. */
        self->dropped[(errno == EAGAIN || errno == EWOULDBLOCK) ? DROP_SEND_FULL
                                                                : DROP_SEND_ERROR]++;
        Py_RETURN_FALSE;
    }
    self->datagrams_sent++;
    Py_RETURN_TRUE;
}

/* --- Engine: legs --------------------------------------------------------- */

static PyObject *Engine_open_leg(EngineObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"fd", "remote", "profile", "tx_key", "rx_key", "on_rtp", "on_rtcp",
                            "connect", NULL};
    int fd, profile, want_connect = 0;
    PyObject *remote, *on_rtp, *on_rtcp;
    Py_buffer tx_key, rx_key;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOiy*y*OO|$p:open_leg", names, &fd, &remote,
                                     &profile, &tx_key, &rx_key, &on_rtp, &on_rtcp,
                                     &want_connect)) {
        return NULL;
    }
    LegObject *leg = NULL;
    SocketObject *sock = socket_of(self, fd);
    if (sock == NULL) {
        PyErr_Format(PyExc_ValueError, "file descriptor %d is not registered", fd);
        goto done;
    }
    if (!PyCallable_Check(on_rtp) || !PyCallable_Check(on_rtcp)) {
        PyErr_SetString(PyExc_TypeError, "on_rtp and on_rtcp must be callable");
        goto done;
    }
    leg = PyObject_New(LegObject, &LegType);
    if (leg == NULL) {
        goto done;
    }
    memset(&leg->tx, 0, sizeof leg->tx);
    memset(&leg->rx, 0, sizeof leg->rx);
    leg->open = 0;
    leg->in_table = 0;
    leg->connected = 0;
    leg->rtcp_ssrc = 0;
    leg->binding_count = 0;
    leg->rtp_received = leg->rtcp_received = leg->sent = 0;
    Py_INCREF(self);
    leg->engine = self;
    Py_INCREF(sock);
    leg->socket = sock;
    Py_INCREF(on_rtp);
    leg->on_rtp = on_rtp;
    Py_INCREF(on_rtcp);
    leg->on_rtcp = on_rtcp;
    if (parse_address(remote, &leg->remote, &leg->remote_len) < 0) {
        Py_CLEAR(leg);
        goto done;
    }
    int status = native_srtp_open(&leg->tx, profile, tx_key.buf, (size_t)tx_key.len, 1);
    if (status == 0) {
        status = native_srtp_open(&leg->rx, profile, rx_key.buf, (size_t)rx_key.len, 0);
    }
    if (status != 0) {
        PyErr_Format(PyExc_ValueError, "cannot open SRTP (libsrtp status %d): profile %d, "
                     "keys of %zd and %zd bytes", status, profile, tx_key.len, rx_key.len);
        Py_CLEAR(leg);
        goto done;
    }
    if (sock->connected && !same_address(&sock->peer, &leg->remote)
        && !(want_connect && sock->legs.count == 0)) {
        PyErr_SetString(PyExc_ValueError, "the socket is connected to another address: "
                        "it serves one participant (open_leg(connect=True))");
        Py_CLEAR(leg);
        goto done;
    }
    LegObject *previous = table_find(&sock->legs, &leg->remote);
    if (previous != NULL) {
        /* The newest handshake from an address wins: what comes from there now is
         * keyed for this leg, so the one before it (a participant that went
         * without its leg being closed) can never receive again. */
        close_leg(previous);
        self->legs_replaced++;
    }
    if (table_add(&sock->legs, leg) < 0) {
        Py_CLEAR(leg);
        goto done;
    }
    leg->open = 1;
    /* A socket of the leg's own (not a shared port's): connected, the kernel
     * looks the route up once instead of per datagram (docs/native.md). What
     * comes from elsewhere is no longer delivered: ICE has selected its pair.
     * If the kernel refuses, the leg sends naming the address, as before. */
    int connected_here = sock->connected && same_address(&sock->peer, &leg->remote);
    if (want_connect && sock->legs.count == 1 && !connected_here
        && connect(fd, (struct sockaddr *)&leg->remote, leg->remote_len) == 0) {
        sock->connected = 1;
        sock->peer = leg->remote;
        connected_here = 1;
    }
    leg->connected = connected_here;
done:
    PyBuffer_Release(&tx_key);
    PyBuffer_Release(&rx_key);
    return (PyObject *)leg;
}

/* Close the leg's SRTP and bindings, and take it out of its socket's table. */
static void close_leg(LegObject *leg)
{
    if (!leg->open) {
        return;
    }
    leg->open = 0;
    native_srtp_close(&leg->tx);
    native_srtp_close(&leg->rx);
    for (int i = 0; i < leg->binding_count; i++) {
        release_binding(&leg->bindings[i]);
    }
    leg->binding_count = 0;
    if (leg->in_table) { /* its address is free for another leg */
        table_remove(&leg->socket->legs, leg);
        Py_DECREF(leg); /* the table's reference, last: it may have been the only one */
    }
}

static PyObject *Engine_dropped(EngineObject *self, void *closure)
{
    (void)closure;
    PyObject *counts = PyDict_New();
    if (counts == NULL) {
        return NULL;
    }
    for (int i = 0; i < DROP_REASONS; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(self->dropped[i]);
        if (value == NULL || PyDict_SetItemString(counts, drop_names[i], value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(counts);
            return NULL;
        }
        Py_DECREF(value);
    }
    return counts;
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"segment", NULL};
    int segment = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$p:Engine", names, &segment)) {
        return NULL;
    }
    EngineObject *self = (EngineObject *)type->tp_alloc(type, 0); /* zeroed: no sockets,
                                                                     no counts */
    if (self == NULL) {
        return NULL;
    }
    self->segment = segment;
    self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epoll_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Engine_dealloc(EngineObject *self)
{
    for (int fd = 0; fd < self->by_fd_size; fd++) {
        SocketObject *sock = self->by_fd[fd];
        if (sock != NULL) {
            sock->open = 0;
            release_legs(sock);
            Py_DECREF(sock);
        }
    }
    PyMem_Free(self->by_fd);
    for (int i = 0; i < self->to_flush_count; i++) {
        Py_DECREF(self->to_flush[i]);
    }
    PyMem_Free(self->to_flush);
    if (self->epoll_fd >= 0) {
        close(self->epoll_fd);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}


/* A packet Python routes (the first packets of a stream, media that came over
 * a link): forwarded as Track.forward would, into the legs of the subscribers
 * that have one; the pairs for the others are returned, for Python to send. */
static PyObject *Engine_forward(EngineObject *self, PyObject *args)
{
    PyObject *track;
    Py_buffer data;
    int layer;
    double now;
    if (!PyArg_ParseTuple(args, "Oy*id:forward", &track, &data, &layer, &now)) {
        return NULL;
    }
    if (!native_is_track(track)) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_TypeError, "track must be a relay._native.Track");
        return NULL;
    }
    mixed_forward_t mixed = {.forwarding = {.engine = self, .announced_count = 0},
                             .rest = PyList_New(0)};
    if (mixed.rest != NULL) {
        Py_INCREF(track); /* a sink's callback may drop the caller's reference */
        if (native_track_forward(track, data.buf, (size_t)data.len, layer, now,
                                 emit_to_leg_or_list, &mixed) < 0) {
            Py_CLEAR(mixed.rest);
        }
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback); /* the sinks are told all the same */
        announce(&mixed.forwarding);
        PyErr_Restore(type, value, traceback);
        Py_DECREF(track);
    }
    PyBuffer_Release(&data);
    return mixed.rest;
}

/* A sender report for a subscriber (native_report_fn): out on its leg when it
 * has one (protected as SRTCP), else appended to the list `context` for Python. */
static int report_to_leg_or_list(void *context, PyObject *subscriber, const uint8_t *report,
                                 size_t length)
{
    LegObject *leg = (LegObject *)native_subscriber_leg(subscriber);
    if (leg == NULL) {
        return native_report_to_list(context, subscriber, report, length);
    }
    if (!leg->open || !leg->socket->open) {
        leg->engine->dropped[DROP_NO_LEG]++;
        return 0;
    }
    leg_send(leg, report, length); /* one it cannot send is dropped and counted */
    return 0;
}

/* Track.sender_reports, with the reports of subscribers that have a leg sent
 * from here: a publisher's SR reaches its subscribers without a Python call
 * per subscriber. */
static PyObject *Engine_sender_reports(EngineObject *self, PyObject *args)
{
    (void)self;
    PyObject *track = PyTuple_GET_SIZE(args) > 0 ? PyTuple_GET_ITEM(args, 0) : NULL;
    if (track == NULL || !native_is_track(track)) {
        PyErr_SetString(PyExc_TypeError, "track must be a relay._native.Track");
        return NULL;
    }
    PyObject *rest_args = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    if (rest_args == NULL) {
        return NULL;
    }
    int layer;
    unsigned long long ntp, rtp_timestamp;
    Py_buffer cname;
    int parsed = native_report_arguments(rest_args, &layer, &ntp, &rtp_timestamp, &cname);
    Py_DECREF(rest_args);
    if (parsed < 0) {
        return NULL;
    }
    PyObject *rest = PyList_New(0);
    if (rest != NULL &&
        native_track_sender_reports(track, layer, ntp, (uint32_t)rtp_timestamp, cname.buf,
                                    (size_t)cname.len, report_to_leg_or_list, rest) < 0) {
        Py_CLEAR(rest);
    }
    PyBuffer_Release(&cname);
    return rest;
}

static PyMethodDef Engine_methods[] = {
    {"forward", (PyCFunction)Engine_forward, METH_VARARGS,
     "forward(track, data, layer, now) -> [(subscriber, bytes)]: Track.forward, with the "
     "copies for subscribers that have a leg sent from here; the others are returned."},
    {"sender_reports", (PyCFunction)Engine_sender_reports, METH_VARARGS,
     "sender_reports(track, layer, ntp, rtp_timestamp, cname) -> [(subscriber, bytes)]: "
     "Track.sender_reports, with the reports for subscribers that have a leg sent from here; "
     "the others are returned."},
    {"add_socket", (PyCFunction)Engine_add_socket, METH_VARARGS,
     "add_socket(fd, protocol): receive on the socket; what is not media goes to "
     "protocol.datagram_received(data, addr)."},
    {"remove_socket", (PyCFunction)Engine_remove_socket, METH_O,
     "remove_socket(fd): forget the socket and close its leg (the fd stays open)."},
    {"poll", (PyCFunction)Engine_poll, METH_NOARGS,
     "poll(): drain every registered socket that is ready (the loop calls it when "
     "fileno is readable)."},
    {"readable", (PyCFunction)Engine_readable, METH_O,
     "readable(fd): drain one socket now (poll does it for every ready one)."},
    {"sendto", (PyCFunction)Engine_sendto, METH_VARARGS,
     "sendto(fd, data, addr) -> bool: one datagram as it is (STUN, DTLS)."},
    {"open_leg", (PyCFunction)(void (*)(void))Engine_open_leg, METH_VARARGS | METH_KEYWORDS,
     "open_leg(fd, remote, profile, tx_key, rx_key, on_rtp, on_rtcp, *, connect=False) -> "
     "Leg: SRTP on the socket from now on, with the remote address ICE selected (a leg the "
     "address had is closed: legs_replaced); connect: connect the socket to that address "
     "when it holds no other leg (sends skip the route lookup)."},
    {NULL, NULL, 0, NULL},
};

/* Counters, read-only, straight from the struct. */
#define ENGINE_COUNTER(name) {#name, T_ULONGLONG, offsetof(EngineObject, name), READONLY, NULL}
static PyMemberDef Engine_members[] = {
    ENGINE_COUNTER(datagrams_received),
    ENGINE_COUNTER(datagrams_sent),
    ENGINE_COUNTER(datagrams_segmented),
    ENGINE_COUNTER(segment_refused),
    ENGINE_COUNTER(upcalls),
    ENGINE_COUNTER(rtp_received),
    ENGINE_COUNTER(rtp_received_bytes),
    ENGINE_COUNTER(rtp_forwarded),
    ENGINE_COUNTER(rtp_forwarded_bytes),
    ENGINE_COUNTER(nacks_sent),
    ENGINE_COUNTER(legs_replaced),
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"fileno", (getter)Engine_get_fileno, NULL,
     "the epoll descriptor of every registered socket: what the loop watches", NULL},
    {"dropped", (getter)Engine_dropped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(*, segment=True): the relay's media sockets: batched I/O, SRTP, upcalls; "
              "segment: runs of one size on a connected socket leave as one UDP GSO send "
              "(docs/native.md).",
    .tp_new = Engine_new,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_members = Engine_members,
    .tp_getset = Engine_getset,
};

/* --- Socket (internal) ---------------------------------------------------- */

static void Socket_dealloc(SocketObject *self)
{
    Py_XDECREF(self->protocol);
    release_legs(self);
    PyObject_Free(self);
}

static PyTypeObject SocketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native._Socket",
    .tp_basicsize = sizeof(SocketObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Socket_dealloc,
};

/* --- Leg ------------------------------------------------------------------ */

static PyObject *Leg_send(LegObject *self, PyObject *arg)
{
    Py_buffer packet;
    if (PyObject_GetBuffer(arg, &packet, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int ok = leg_send(self, packet.buf, (size_t)packet.len) == 0;
    PyBuffer_Release(&packet);
    return PyBool_FromLong(ok);
}

static PyObject *Leg_close(LegObject *self, PyObject *unused)
{
    (void)unused;
    close_leg(self);
    Py_RETURN_NONE;
}

static void Leg_dealloc(LegObject *self)
{
    close_leg(self);
    native_srtp_close(&self->tx); /* a leg that never opened may hold one session */
    native_srtp_close(&self->rx);
    Py_XDECREF(self->on_rtp);
    Py_XDECREF(self->on_rtcp);
    Py_XDECREF(self->socket);
    Py_XDECREF(self->engine);
    PyObject_Free(self);
}

static PyObject *Leg_get_remote(LegObject *self, void *closure)
{
    (void)closure;
    return address_tuple(&self->remote);
}

static PyObject *Leg_get_connected(LegObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->connected);
}

static PyObject *Leg_get_open(LegObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->open);
}


static PyObject *Leg_bind(LegObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"ssrc", "track", "layer", "payload_type", "clock_rate",
                            "audio_level_id", "nack", NULL};
    unsigned long ssrc;
    PyObject *track;
    int layer, payload_type, clock_rate, audio_level_id = 0, nack = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "kOiii|ip:bind", names, &ssrc, &track,
                                     &layer, &payload_type, &clock_rate, &audio_level_id,
                                     &nack)) {
        return NULL;
    }
    if (!native_is_track(track)) {
        PyErr_SetString(PyExc_TypeError, "track must be a relay._native.Track");
        return NULL;
    }
    if (ssrc > 0xFFFFFFFFUL || payload_type < 0 || payload_type > 127 || clock_rate <= 0
        || audio_level_id < 0 || audio_level_id > 14 || layer < 0) {
        PyErr_SetString(PyExc_ValueError, "ssrc, payload type, clock rate, level id or layer "
                        "out of range");
        return NULL;
    }
    if (!self->open) {
        Py_RETURN_FALSE;
    }
    binding_t *binding = find_binding(self, (uint32_t)ssrc);
    if (binding == NULL) {
        if (self->binding_count == MAX_BINDINGS) {
            Py_RETURN_FALSE; /* more streams than a participant sends: left to Python */
        }
        binding = &self->bindings[self->binding_count++];
        memset(binding, 0, sizeof *binding);
        binding->ssrc = (uint32_t)ssrc;
        reception_init(&binding->stats, (uint32_t)ssrc, (uint32_t)clock_rate);
    }
    Py_INCREF(track);
    Py_XSETREF(binding->track, track);
    binding->layer = layer;
    binding->payload_type = payload_type;
    binding->audio_level_id = audio_level_id;
    if (nack && binding->missing == NULL) {
        binding->missing = PyMem_Malloc(sizeof *binding->missing);
        if (binding->missing == NULL) {
            return PyErr_NoMemory();
        }
        missing_init(binding->missing);
    }
    Py_RETURN_TRUE;
}

static PyObject *Leg_unbind(LegObject *self, PyObject *arg)
{
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    for (int i = 0; i < self->binding_count; i++) {
        if (self->bindings[i].ssrc == ssrc) {
            release_binding(&self->bindings[i]);
            self->bindings[i] = self->bindings[--self->binding_count];
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

static binding_t *binding_arg(LegObject *self, PyObject *arg)
{
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (ssrc == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    binding_t *binding = find_binding(self, (uint32_t)ssrc);
    if (binding == NULL) {
        PyErr_SetString(PyExc_KeyError, "the SSRC is not bound");
    }
    return binding;
}

static PyObject *Leg_report_block(LegObject *self, PyObject *args)
{
    PyObject *ssrc;
    double now;
    if (!PyArg_ParseTuple(args, "Od:report_block", &ssrc, &now)) {
        return NULL;
    }
    binding_t *binding = binding_arg(self, ssrc);
    if (binding == NULL) {
        return NULL;
    }
    uint8_t block[RECEPTION_REPORT_BLOCK_SIZE];
    reception_report(&binding->stats, now, block);
    return PyBytes_FromStringAndSize((const char *)block, sizeof block);
}

static PyObject *Leg_reception(LegObject *self, PyObject *arg)
{
    binding_t *binding = binding_arg(self, arg);
    if (binding == NULL) {
        return NULL;
    }
    const reception_stats_t *stats = &binding->stats;
    long long expected = 0;
    if (stats->base_seq >= 0) {
        expected = (long long)(stats->cycles + stats->max_seq - stats->base_seq + 1);
    }
    return Py_BuildValue("LLd", (long long)stats->received, expected, stats->jitter);
}

static PyObject *Leg_sender_report(LegObject *self, PyObject *args)
{
    PyObject *ssrc;
    unsigned long long ntp;
    double now;
    if (!PyArg_ParseTuple(args, "OKd:sender_report", &ssrc, &ntp, &now)) {
        return NULL;
    }
    binding_t *binding = binding_arg(self, ssrc);
    if (binding == NULL) {
        return NULL;
    }
    reception_sender_report(&binding->stats, ntp, now);
    Py_RETURN_NONE;
}

static PyObject *Leg_take_levels(LegObject *self, PyObject *arg)
{
    binding_t *binding = binding_arg(self, arg);
    if (binding == NULL) {
        return NULL;
    }
    PyObject *result = Py_BuildValue("(dK)", binding->levels.total,
                                     (unsigned long long)binding->levels.count);
    binding->levels.total = 0.0;
    binding->levels.count = 0;
    return result;
}

static PyObject *Leg_get_rtcp_ssrc(LegObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(self->rtcp_ssrc);
}

static int Leg_set_rtcp_ssrc(LegObject *self, PyObject *value, void *closure)
{
    (void)closure;
    unsigned long ssrc = value ? PyLong_AsUnsignedLong(value) : (unsigned long)-1;
    if (ssrc == (unsigned long)-1 && (PyErr_Occurred() || value == NULL)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "rtcp_ssrc cannot be deleted");
        }
        return -1;
    }
    if (ssrc > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "an SSRC has 32 bits");
        return -1;
    }
    self->rtcp_ssrc = (uint32_t)ssrc;
    return 0;
}

static PyObject *Leg_get_bound(LegObject *self, void *closure)
{
    (void)closure;
    PyObject *ssrcs = PyList_New(0);
    for (int i = 0; ssrcs != NULL && i < self->binding_count; i++) {
        PyObject *ssrc = PyLong_FromUnsignedLong(self->bindings[i].ssrc);
        if (ssrc == NULL || PyList_Append(ssrcs, ssrc) < 0) {
            Py_XDECREF(ssrc);
            Py_CLEAR(ssrcs);
            break;
        }
        Py_DECREF(ssrc);
    }
    return ssrcs;
}

static PyMethodDef Leg_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))Leg_bind, METH_VARARGS | METH_KEYWORDS,
     "bind(ssrc, track, layer, payload_type, clock_rate, audio_level_id=0, nack=False) -> "
     "bool: the engine keeps this SSRC's books and, while the track is fast, forwards "
     "its packets without Python (False: not bound, Python keeps it)."},
    {"unbind", (PyCFunction)Leg_unbind, METH_O, "unbind(ssrc) -> bool"},
    {"report_block", (PyCFunction)Leg_report_block, METH_VARARGS,
     "report_block(ssrc, now) -> 24 bytes: the RR block of a bound SSRC."},
    {"reception", (PyCFunction)Leg_reception, METH_O,
     "reception(ssrc) -> (received, expected, jitter): a bound SSRC's counts since it was\n"
     "bound (jitter in clock units), read without starting a report interval."},
    {"sender_report", (PyCFunction)Leg_sender_report, METH_VARARGS,
     "sender_report(ssrc, ntp, now): an SR of a bound SSRC arrived (for LSR/DLSR)."},
    {"take_levels", (PyCFunction)Leg_take_levels, METH_O,
     "take_levels(ssrc) -> (sum of linear amplitudes, packets) since the last call."},
    {"send", (PyCFunction)Leg_send, METH_O,
     "send(packet) -> bool: protect one RTP or RTCP packet and send it to the leg's "
     "remote address (False: dropped, and counted)."},
    {"close", (PyCFunction)Leg_close, METH_NOARGS,
     "close(): no more SRTP on the socket; media on it goes up as datagrams again."},
    {NULL, NULL, 0, NULL},
};

#define LEG_COUNTER(name) {#name, T_ULONGLONG, offsetof(LegObject, name), READONLY, NULL}
static PyMemberDef Leg_members[] = {
    LEG_COUNTER(rtp_received),
    LEG_COUNTER(rtcp_received),
    LEG_COUNTER(sent),
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Leg_getset[] = {
    {"rtcp_ssrc", (getter)Leg_get_rtcp_ssrc, (setter)Leg_set_rtcp_ssrc,
     "the sender SSRC of the NACKs the engine sends", NULL},
    {"bound", (getter)Leg_get_bound, NULL, "the SSRCs bound, in no order", NULL},
    {"remote", (getter)Leg_get_remote, NULL, NULL, NULL},
    {"open", (getter)Leg_get_open, NULL, NULL, NULL},
    {"connected", (getter)Leg_get_connected, NULL,
     "its socket is connected to the remote address (open_leg(connect=True))", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LegType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._native.Leg",
    .tp_basicsize = sizeof(LegObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A participant's keyed leg (Engine.open_leg).",
    .tp_dealloc = (destructor)Leg_dealloc,
    .tp_methods = Leg_methods,
    .tp_members = Leg_members,
    .tp_getset = Leg_getset,
};

/* --- module --------------------------------------------------------------- */

/* Engine and Leg, into relay._native (module.c). */
int native_engine_setup_module(PyObject *module)
{
    if (PyType_Ready(&SocketType) < 0 || PyType_Ready(&EngineType) < 0
        || PyType_Ready(&LegType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Engine", (PyObject *)&EngineType) < 0
        || PyModule_AddObjectRef(module, "Leg", (PyObject *)&LegType) < 0
        || PyModule_AddIntConstant(module, "BATCH", BATCH) < 0
        || PyModule_AddIntConstant(module, "READ_BUDGET", READ_BUDGET) < 0) {
        return -1;
    }
    return 0;
}
