/*
 * stunload - a small STUN Binding load generator for loopback benchmarks.
 *
 * Client mode (default): one UDP socket connected to 127.0.0.1:PORT sends
 * RFC 5389 Binding requests in batches with sendmmsg(2) and reads answers
 * with recvmmsg(2), keeping a bounded window of requests outstanding
 * (closed loop).  Every answer is validated: message type 0x0101, length,
 * magic cookie, a transaction id this run sent (and not answered before),
 * well-formed attributes, and an XOR-MAPPED-ADDRESS that decodes to the
 * socket's own address and port.  After a warm-up, answers are counted for
 * a fixed duration; one JSON line is printed at the end.
 *
 * Transaction id: 4 bytes big-endian sequence number + 8 bytes keyed hash
 * of (run key, sequence), so ids are unpredictable, and any id can be
 * checked without state; a table indexed by sequence holds the send time
 * (per send batch) for latency and the answered/expired state.
 *
 * Serve mode (--serve): a minimal C Binding reflector with recvmmsg and
 * sendmmsg, used only to show the ceiling of the load generator itself.
 *
 * Relay mode (--relay, for bench/turn_bench.py): sets nothing up itself.
 * It is handed two UDP sockets already bound (--send-fd, --recv-fd; the
 * harness made the TURN allocation, permission and channel from them),
 * sends numbered datagrams from the first to 127.0.0.1:--send-to with
 * sendmmsg, each prefixed with a ChannelData header when --send-channel is
 * given, and reads what arrives on the second with recvmmsg: it must come
 * from 127.0.0.1:--expect-from, carry a ChannelData header for
 * --expect-channel when given (padding to 4 bytes allowed), and hold the
 * exact payload that was sent (--payload bytes: sequence number, keyed hash,
 * then a pattern of the sequence: every byte checked), once.  A datagram
 * with another run's hash but an intact pattern is an earlier run's, relayed
 * late by a backed-up server: counted as late, not invalid.  Closed loop
 * with a window, or open loop at --rate, as in client mode; the same JSON
 * line ("answered" counts the datagrams relayed).  Both fds at 127.0.0.1.
 *
 * --ipv6 (client mode): the socket is bound to ::1 and connected to
 * [::1]:PORT instead, and the XOR-MAPPED-ADDRESS must be of family 0x02
 * (16 bytes XOR-ed with the magic cookie and the transaction id, RFC 8489).
 *
 * Only 127.0.0.0/8 (or ::1) targets are accepted.  Both modes stop by themselves.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define COOKIE 0x2112A442u
#define TABLE_BITS 20
#define TABLE_SIZE (1u << TABLE_BITS)
#define TABLE_MASK (TABLE_SIZE - 1)
#define MAX_BATCH 256
#define BUF_SIZE 1500
#define HIST_US 1000000 /* 1 us buckets up to 1 s, then one overflow bucket */

enum { ST_FREE = 0, ST_PENDING = 1, ST_ANSWERED = 2, ST_EXPIRED = 3 };

enum {
    R_SHORT, R_TYPE, R_LENGTH, R_COOKIE, R_TXID, R_DUP, R_ATTR, R_NO_XMA,
    R_XMA_FAMILY, R_XMA_ADDR, R_SOURCE, R_CHANNEL, R_PAYLOAD, R_COUNT
};
static const char *reason_names[R_COUNT] = {
    "short", "type", "length", "cookie", "txid", "duplicate", "attribute",
    "no_xor_mapped_address", "xma_family", "xma_address", "source", "channel",
    "payload"};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}
static void put64(uint8_t *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static void usage(void)
{
    fprintf(stderr,
            "usage: stunload --port P [--ipv6] [--duration S] [--warmup S] [--window N]\n"
            "                [--batch N] [--rate R] [--reorder N] [--timeout-ms MS]\n"
            "                [--drain-ms MS]\n"
            "       stunload --serve P [--serve-seconds S]\n"
            "       stunload --relay --send-fd FD --recv-fd FD --send-to PORT --expect-from PORT\n"
            "                [--send-channel N] [--expect-channel N] [--payload BYTES]\n"
            "                [--duration S] [--warmup S] [--window N] [--batch N] [--rate R]\n"
            "                [--reorder N] [--timeout-ms MS] [--drain-ms MS]\n");
    exit(2);
}

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

/* ------------------------------------------------------------------ */
/* serve mode: minimal reflector (generator ceiling reference)         */
/* ------------------------------------------------------------------ */
static int serve(int port, double seconds)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int big = 8 << 20; /* like coturn and natsalon: a large receive buffer */
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("bind");
        return 1;
    }
    static uint8_t in[MAX_BATCH][BUF_SIZE], out[MAX_BATCH][32];
    static struct sockaddr_in peers[MAX_BATCH];
    static struct iovec iov_in[MAX_BATCH], iov_out[MAX_BATCH];
    static struct mmsghdr rm[MAX_BATCH], sm[MAX_BATCH];
    for (int i = 0; i < MAX_BATCH; i++) {
        iov_in[i].iov_base = in[i];
        iov_in[i].iov_len = BUF_SIZE;
        rm[i].msg_hdr.msg_iov = &iov_in[i];
        rm[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t deadline = now_ns() + (uint64_t)(seconds * 1e9);
    while (!stop_flag && now_ns() < deadline) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        for (int i = 0; i < MAX_BATCH; i++) {
            rm[i].msg_hdr.msg_name = &peers[i];
            rm[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, rm, 64, MSG_DONTWAIT, NULL);
        if (n <= 0)
            continue;
        int k = 0;
        for (int i = 0; i < n; i++) {
            const uint8_t *q = in[i];
            if (rm[i].msg_len < 20 || get16(q) != 0x0001 || get32(q + 4) != COOKIE)
                continue;
            uint8_t *r = out[k];
            put16(r, 0x0101);
            put16(r + 2, 12);
            memcpy(r + 4, q + 4, 16);
            put16(r + 20, 0x0020);
            put16(r + 22, 8);
            r[24] = 0;
            r[25] = 1;
            put16(r + 26, ntohs(peers[i].sin_port) ^ (COOKIE >> 16));
            put32(r + 28, ntohl(peers[i].sin_addr.s_addr) ^ COOKIE);
            iov_out[k].iov_base = r;
            iov_out[k].iov_len = 32;
            memset(&sm[k].msg_hdr, 0, sizeof sm[k].msg_hdr);
            sm[k].msg_hdr.msg_name = &peers[i];
            sm[k].msg_hdr.msg_namelen = sizeof peers[i];
            sm[k].msg_hdr.msg_iov = &iov_out[k];
            sm[k].msg_hdr.msg_iovlen = 1;
            k++;
        }
        if (k)
            sendmmsg(fd, sm, k, 0);
    }
    close(fd);
    return 0;
}

/* ------------------------------------------------------------------ */
/* client mode                                                          */
/* ------------------------------------------------------------------ */
struct slot {
    uint64_t sent_ns;
    uint32_t seq;
    uint8_t state;
};

static struct slot table[TABLE_SIZE];
static uint32_t hist[HIST_US + 1];

/* ------------------------------------------------------------------ */
/* relay mode: datagrams through a TURN relay (or a direct path)        */
/* ------------------------------------------------------------------ */
struct relay_args {
    int send_fd, recv_fd, send_to, expect_from, send_channel, expect_channel, payload;
    double duration, warmup, rate, timeout_ms, drain_ms;
    int window, batch, reorder;
};

/* the payload of datagram `seq`: seq, keyed hash, then a pattern */
static void fill_payload(uint8_t *p, int len, uint64_t key, uint32_t seq)
{
    put32(p, seq);
    put64(p + 4, mix64(key ^ seq));
    for (int j = 12; j < len; j++)
        p[j] = (uint8_t)(seq * 7 + j);
}

static void print_result(uint64_t sent_measured, uint64_t answered_measured, uint64_t invalid,
                         double duration, double warmup, uint64_t hist_count, uint64_t sent_total,
                         uint64_t answered_total, uint64_t lost, uint64_t late, uint64_t send_errors,
                         int window, int batch, int reorder, double rate, const uint64_t *reasons);

static int relay_mode(struct relay_args *a)
{
    const int hdr_out = a->send_channel ? 4 : 0;
    const int hdr_in = a->expect_channel ? 4 : 0;
    const int pad_in = hdr_in ? (-a->payload & 3) : 0;
    const unsigned want_len = hdr_in + a->payload, want_padded = want_len + pad_in;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(a->send_to)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by construction */
    int big = 8 << 20;
    if (setsockopt(a->recv_fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(a->recv_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (setsockopt(a->send_fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
        setsockopt(a->send_fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    fcntl(a->send_fd, F_SETFL, fcntl(a->send_fd, F_GETFL) | O_NONBLOCK);
    fcntl(a->recv_fd, F_SETFL, fcntl(a->recv_fd, F_GETFL) | O_NONBLOCK);

    uint64_t key;
    if (getrandom(&key, sizeof key, 0) != sizeof key)
        key = now_ns() ^ ((uint64_t)getpid() << 32);

    static uint8_t sbuf[MAX_BATCH][BUF_SIZE], rbuf[MAX_BATCH][BUF_SIZE], expect[BUF_SIZE];
    static struct iovec siov[MAX_BATCH], riov[MAX_BATCH];
    static struct mmsghdr smsg[MAX_BATCH], rmsg[MAX_BATCH];
    static struct sockaddr_in from[MAX_BATCH];
    for (int i = 0; i < MAX_BATCH; i++) {
        if (hdr_out) {
            put16(sbuf[i], (uint16_t)a->send_channel);
            put16(sbuf[i] + 2, (uint16_t)a->payload);
        }
        siov[i].iov_base = sbuf[i];
        siov[i].iov_len = hdr_out + a->payload;
        smsg[i].msg_hdr.msg_iov = &siov[i];
        smsg[i].msg_hdr.msg_iovlen = 1;
        smsg[i].msg_hdr.msg_name = &to;
        smsg[i].msg_hdr.msg_namelen = sizeof to;
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = BUF_SIZE;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t sent_total = 0, sent_measured = 0, answered_total = 0, answered_measured = 0;
    uint64_t lost = 0, late = 0, invalid = 0, send_errors = 0, hist_count = 0, stale = 0;
    uint64_t reasons[R_COUNT] = {0};
    uint32_t next_seq = 0, oldest = 0, max_answered = 0;
    int64_t outstanding = 0;
    const uint64_t timeout_ns = (uint64_t)(a->timeout_ms * 1e6);
    const uint64_t t0 = now_ns();
    const uint64_t t_measure = t0 + (uint64_t)(a->warmup * 1e9);
    const uint64_t t_end = t_measure + (uint64_t)(a->duration * 1e9);
    const uint64_t t_drain_end = t_end + (uint64_t)(a->drain_ms * 1e6);
    uint64_t now = t0;
    int first_bad_logged = 0;

    while (!stop_flag && now < t_drain_end) {
        int did = 0;
        if (now < t_end && outstanding < a->window &&
            (uint32_t)(next_seq - oldest) < TABLE_SIZE - MAX_BATCH) {
            int n = a->window - (int)outstanding;
            if (n > a->batch) n = a->batch;
            if (a->rate > 0) {
                double due = (double)(now - t0) * 1e-9 * a->rate - (double)sent_total;
                if (due < n) n = due < 0 ? 0 : (int)due;
            }
            for (int i = 0; i < n; i++)
                fill_payload(sbuf[i] + hdr_out, a->payload, key, next_seq + i);
            int r = n > 0 ? sendmmsg(a->send_fd, smsg, n, 0) : 0;
            if (r > 0) {
                for (int i = 0; i < r; i++) {
                    struct slot *s = &table[(next_seq + i) & TABLE_MASK];
                    s->seq = next_seq + i;
                    s->sent_ns = now;
                    s->state = ST_PENDING;
                }
                next_seq += r;
                outstanding += r;
                sent_total += r;
                if (now >= t_measure) sent_measured += r;
                did = 1;
            } else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) {
                send_errors++;
            }
        }
        for (int i = 0; i < a->batch; i++) {
            rmsg[i].msg_hdr.msg_name = &from[i];
            rmsg[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int r = recvmmsg(a->recv_fd, rmsg, a->batch, MSG_DONTWAIT, NULL);
        if (r > 0) {
            did = 1;
            uint64_t t_rx = now_ns();
            int measured = t_rx >= t_measure && t_rx < t_end;
            for (int i = 0; i < r; i++) {
                const uint8_t *p = rbuf[i];
                unsigned len = rmsg[i].msg_len;
                int bad = -1;
                uint32_t seq = 0;
                struct slot *s = NULL;
                if (from[i].sin_family != AF_INET || ntohs(from[i].sin_port) != a->expect_from ||
                    ntohl(from[i].sin_addr.s_addr) != INADDR_LOOPBACK)
                    bad = R_SOURCE;
                else if (len < (unsigned)hdr_in + 12) bad = R_SHORT;
                else if (len != want_len && len != want_padded) bad = R_LENGTH;
                else if (hdr_in && (get16(p) != a->expect_channel || get16(p + 2) != a->payload))
                    bad = R_CHANNEL;
                if (bad < 0) {
                    seq = get32(p + hdr_in);
                    fill_payload(expect, a->payload, key, seq);
                    if (get64(p + hdr_in + 4) != mix64(key ^ seq)) {
                        /* another run's key: a datagram of an earlier run that a
                           backed-up server relays late, if the rest is intact */
                        if (!memcmp(expect + 12, p + hdr_in + 12, a->payload - 12)) {
                            stale++;
                            continue;
                        }
                        bad = R_TXID;
                    } else if (seq >= next_seq)
                        bad = R_TXID;
                }
                if (bad < 0) {
                    if (memcmp(expect, p + hdr_in, a->payload) != 0)
                        bad = R_PAYLOAD;
                    for (unsigned j = want_len; bad < 0 && j < len; j++)
                        if (p[j]) bad = R_PAYLOAD;
                }
                if (bad < 0) {
                    s = &table[seq & TABLE_MASK];
                    if (s->seq != seq || s->state == ST_EXPIRED || s->state == ST_FREE) {
                        late++;
                        continue;
                    }
                    if (s->state == ST_ANSWERED) bad = R_DUP;
                }
                if (bad >= 0) {
                    invalid++;
                    reasons[bad]++;
                    if (!first_bad_logged) {
                        first_bad_logged = 1;
                        fprintf(stderr, "stunload: first invalid datagram (%s), %u bytes:", reason_names[bad], len);
                        for (unsigned j = 0; j < len && j < 32; j++)
                            fprintf(stderr, " %02x", p[j]);
                        fprintf(stderr, "\n");
                    }
                    continue;
                }
                s->state = ST_ANSWERED;
                if (seq + 1 > max_answered) max_answered = seq + 1;
                outstanding--;
                answered_total++;
                if (measured) {
                    answered_measured++;
                    uint64_t us = (t_rx - s->sent_ns) / 1000;
                    hist[us < HIST_US ? us : HIST_US]++;
                    hist_count++;
                }
            }
        }
        now = now_ns();
        while (oldest != next_seq) {
            struct slot *s = &table[oldest & TABLE_MASK];
            if (s->state == ST_PENDING) {
                if (now - s->sent_ns < timeout_ns && max_answered < oldest + 1 + (uint32_t)a->reorder)
                    break;
                s->state = ST_EXPIRED;
                outstanding--;
                lost++;
            }
            oldest++;
        }
        if (!did) {
            if (now >= t_end && outstanding == 0)
                break;
            if (a->rate > 0 && now < t_end)
                continue;
            struct pollfd pfd = {.fd = a->recv_fd, .events = POLLIN};
            poll(&pfd, 1, 1);
            now = now_ns();
        }
    }
    while (oldest != next_seq) {
        struct slot *s = &table[oldest & TABLE_MASK];
        if (s->state == ST_PENDING) lost++;
        oldest++;
    }
    /* `late` in the JSON counts both: ours retired as lost, and an earlier run's */
    print_result(sent_measured, answered_measured, invalid, a->duration, a->warmup, hist_count, sent_total,
                 answered_total, lost, late + stale, send_errors, a->window, a->batch, a->reorder, a->rate, reasons);
    if (stale)
        fprintf(stderr, "stunload: %llu datagrams of an earlier run (another key, payload intact) ignored\n",
                (unsigned long long)stale);
    return 0;
}

int main(int argc, char **argv)
{
    int port = 0, serve_port = 0;
    double duration = 3.0, warmup = 0.5, serve_seconds = 60.0;
    int window = 2048, batch = 64;
    double timeout_ms = 200.0, drain_ms = 200.0;
    int reorder = 256;
    double rate = 0; /* 0: closed loop (window only); else open loop, requests/s */
    int relay = 0, ipv6 = 0;
    struct relay_args ra = {.send_fd = -1, .recv_fd = -1, .payload = 100};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--relay")) {
            relay = 1;
            continue;
        }
        if (!strcmp(a, "--ipv6")) {
            ipv6 = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--timeout-ms")) timeout_ms = atof(v);
        else if (!strcmp(a, "--drain-ms")) drain_ms = atof(v);
        else if (!strcmp(a, "--reorder")) reorder = atoi(v);
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--serve")) serve_port = atoi(v);
        else if (!strcmp(a, "--serve-seconds")) serve_seconds = atof(v);
        else if (!strcmp(a, "--send-fd")) ra.send_fd = atoi(v);
        else if (!strcmp(a, "--recv-fd")) ra.recv_fd = atoi(v);
        else if (!strcmp(a, "--send-to")) ra.send_to = atoi(v);
        else if (!strcmp(a, "--expect-from")) ra.expect_from = atoi(v);
        else if (!strcmp(a, "--send-channel")) ra.send_channel = (int)strtol(v, NULL, 0);
        else if (!strcmp(a, "--expect-channel")) ra.expect_channel = (int)strtol(v, NULL, 0);
        else if (!strcmp(a, "--payload")) ra.payload = atoi(v);
        else usage();
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    if (relay) {
        if (ra.send_fd < 0 || ra.recv_fd < 0 || ra.send_to <= 0 || ra.send_to > 65535 ||
            ra.expect_from <= 0 || ra.expect_from > 65535 || ra.payload < 12 || ra.payload > 1400 ||
            ra.send_channel < 0 || ra.send_channel > 0x7FFF || ra.expect_channel < 0 ||
            ra.expect_channel > 0x7FFF || duration <= 0 || duration > 600 || warmup < 0 || warmup > 60 ||
            window < 1 || window > (int)(TABLE_SIZE / 4) || batch < 1 || batch > MAX_BATCH || reorder < 1 ||
            rate < 0 || rate > 1e7 || timeout_ms <= 0 || drain_ms < 0 || drain_ms > 10000)
            usage();
        ra.duration = duration; ra.warmup = warmup; ra.rate = rate; ra.timeout_ms = timeout_ms;
        ra.drain_ms = drain_ms; ra.window = window; ra.batch = batch; ra.reorder = reorder;
        return relay_mode(&ra);
    }
    if (serve_port > 0) {
        if (serve_seconds <= 0 || serve_seconds > 3600) usage();
        return serve(serve_port, serve_seconds);
    }
    if (port <= 0 || port > 65535 || duration <= 0 || duration > 600 || warmup < 0 ||
        warmup > 60 || window < 1 || window > (int)(TABLE_SIZE / 4) || batch < 1 ||
        batch > MAX_BATCH || reorder < 1 || rate < 0 || rate > 1e7 || timeout_ms <= 0 || drain_ms < 0 || drain_ms > 10000)
        usage();

    int fd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int big = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    uint16_t my_port;
    uint32_t my_addr = 0;
    uint8_t my_addr6[16] = {0};
    if (ipv6) {
        struct sockaddr_in6 srv6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        srv6.sin6_addr = in6addr_loopback; /* loopback only, by construction */
        struct sockaddr_in6 me6 = {.sin6_family = AF_INET6};
        me6.sin6_addr = in6addr_loopback;
        if (bind(fd, (struct sockaddr *)&me6, sizeof me6) < 0 ||
            connect(fd, (struct sockaddr *)&srv6, sizeof srv6) < 0) {
            perror("bind/connect");
            return 1;
        }
        socklen_t mel = sizeof me6;
        getsockname(fd, (struct sockaddr *)&me6, &mel);
        my_port = ntohs(me6.sin6_port);
        memcpy(my_addr6, &me6.sin6_addr, 16);
    } else {
        struct sockaddr_in srv = {.sin_family = AF_INET, .sin_port = htons(port)};
        srv.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by construction */
        struct sockaddr_in me = {.sin_family = AF_INET};
        me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0 ||
            connect(fd, (struct sockaddr *)&srv, sizeof srv) < 0) {
            perror("bind/connect");
            return 1;
        }
        socklen_t mel = sizeof me;
        getsockname(fd, (struct sockaddr *)&me, &mel);
        my_port = ntohs(me.sin_port);
        my_addr = ntohl(me.sin_addr.s_addr);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

    uint64_t key;
    if (getrandom(&key, sizeof key, 0) != sizeof key)
        key = now_ns() ^ ((uint64_t)getpid() << 32);

    static uint8_t sbuf[MAX_BATCH][20], rbuf[MAX_BATCH][BUF_SIZE];
    static struct iovec siov[MAX_BATCH], riov[MAX_BATCH];
    static struct mmsghdr smsg[MAX_BATCH], rmsg[MAX_BATCH];
    for (int i = 0; i < MAX_BATCH; i++) {
        put16(sbuf[i], 0x0001);
        put16(sbuf[i] + 2, 0);
        put32(sbuf[i] + 4, COOKIE);
        siov[i].iov_base = sbuf[i];
        siov[i].iov_len = 20;
        smsg[i].msg_hdr.msg_iov = &siov[i];
        smsg[i].msg_hdr.msg_iovlen = 1;
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = BUF_SIZE;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t sent_total = 0, sent_measured = 0, answered_total = 0, answered_measured = 0;
    uint64_t lost = 0, late = 0, invalid = 0, send_errors = 0;
    uint64_t reasons[R_COUNT] = {0};
    uint64_t hist_count = 0;
    uint32_t next_seq = 0, oldest = 0; /* seq of oldest slot not yet retired */
    uint32_t max_answered = 0;         /* highest seq answered so far, +1 */
    int64_t outstanding = 0;
    const uint64_t timeout_ns = (uint64_t)(timeout_ms * 1e6);

    const uint64_t t0 = now_ns();
    const uint64_t t_measure = t0 + (uint64_t)(warmup * 1e9);
    const uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
    const uint64_t t_drain_end = t_end + (uint64_t)(drain_ms * 1e6);
    uint64_t now = t0;
    int first_bad_logged = 0;

    while (!stop_flag && now < t_drain_end) {
        int did = 0;
        /* send a batch while the window has room */
        if (now < t_end && outstanding < window &&
            (uint32_t)(next_seq - oldest) < TABLE_SIZE - MAX_BATCH) {
            int n = window - (int)outstanding;
            if (n > batch) n = batch;
            if (rate > 0) {
                /* open loop: keep the number sent on the schedule */
                double due = (double)(now - t0) * 1e-9 * rate - (double)sent_total;
                if (due < n) n = due < 0 ? 0 : (int)due;
            }
            for (int i = 0; i < n; i++) {
                uint32_t seq = next_seq + i;
                put32(sbuf[i] + 8, seq);
                put64(sbuf[i] + 12, mix64(key ^ seq));
            }
            int r = n > 0 ? sendmmsg(fd, smsg, n, 0) : 0;
            if (r > 0) {
                for (int i = 0; i < r; i++) {
                    struct slot *s = &table[(next_seq + i) & TABLE_MASK];
                    s->seq = next_seq + i;
                    s->sent_ns = now;
                    s->state = ST_PENDING;
                }
                next_seq += r;
                outstanding += r;
                sent_total += r;
                if (now >= t_measure) sent_measured += r;
                did = 1;
            } else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) {
                /* e.g. ECONNREFUSED from an ICMP port unreachable */
                send_errors++;
            }
        }
        /* receive whatever is there */
        int r = recvmmsg(fd, rmsg, batch, MSG_DONTWAIT, NULL);
        if (r < 0 && errno == ECONNREFUSED)
            send_errors++;
        if (r > 0) {
            did = 1;
            uint64_t t_rx = now_ns();
            int measured = t_rx >= t_measure && t_rx < t_end;
            for (int i = 0; i < r; i++) {
                const uint8_t *p = rbuf[i];
                unsigned len = rmsg[i].msg_len;
                int bad = -1;
                if (len < 20) bad = R_SHORT;
                else if (get16(p) != 0x0101) bad = R_TYPE;
                else if (get16(p + 2) != len - 20 || (len & 3)) bad = R_LENGTH;
                else if (get32(p + 4) != COOKIE) bad = R_COOKIE;
                uint32_t seq = 0;
                struct slot *s = NULL;
                if (bad < 0) {
                    seq = get32(p + 8);
                    if (get64(p + 12) != mix64(key ^ seq) ||
                        seq >= next_seq)
                        bad = R_TXID;
                }
                if (bad < 0) {
                    /* attributes: well-formed TLVs, find XOR-MAPPED-ADDRESS */
                    unsigned off = 20;
                    int xma = 0;
                    while (off < len) {
                        if (off + 4 > len) { bad = R_ATTR; break; }
                        unsigned t = get16(p + off), l = get16(p + off + 2);
                        unsigned padded = (l + 3) & ~3u;
                        if (off + 4 + padded > len) { bad = R_ATTR; break; }
                        if (t == 0x0020 && !xma) {
                            xma = 1;
                            if (l != (ipv6 ? 20u : 8u) || p[off + 5] != (ipv6 ? 0x02 : 0x01)) {
                                bad = R_XMA_FAMILY;
                                break;
                            }
                            uint16_t xp = get16(p + off + 6) ^ (uint16_t)(COOKIE >> 16);
                            if (xp != my_port) { bad = R_XMA_ADDR; break; }
                            if (ipv6) {
                                /* XOR with the cookie and transaction id: bytes 4..20 of the header */
                                for (int k = 0; k < 16; k++)
                                    if ((p[off + 8 + k] ^ p[4 + k]) != my_addr6[k]) { bad = R_XMA_ADDR; break; }
                                if (bad >= 0) break;
                            } else if ((get32(p + off + 8) ^ COOKIE) != my_addr) {
                                bad = R_XMA_ADDR;
                                break;
                            }
                        }
                        off += 4 + padded;
                    }
                    if (bad < 0 && !xma) bad = R_NO_XMA;
                }
                if (bad < 0) {
                    s = &table[seq & TABLE_MASK];
                    if (s->seq != seq || s->state == ST_EXPIRED || s->state == ST_FREE) {
                        late++; /* ours, but retired as lost: not counted */
                        continue;
                    }
                    if (s->state == ST_ANSWERED) bad = R_DUP;
                }
                if (bad >= 0) {
                    invalid++;
                    reasons[bad]++;
                    if (!first_bad_logged) {
                        first_bad_logged = 1;
                        fprintf(stderr, "stunload: first invalid answer (%s), %u bytes:",
                                reason_names[bad], len);
                        for (unsigned j = 0; j < len && j < 64; j++)
                            fprintf(stderr, " %02x", p[j]);
                        fprintf(stderr, "\n");
                    }
                    continue;
                }
                s->state = ST_ANSWERED;
                if (seq + 1 > max_answered) max_answered = seq + 1;
                outstanding--;
                answered_total++;
                if (measured) {
                    answered_measured++;
                    uint64_t us = (t_rx - s->sent_ns) / 1000;
                    hist[us < HIST_US ? us : HIST_US]++;
                    hist_count++;
                }
            }
        }
        now = now_ns();
        /* retire answered slots and expire old unanswered ones */
        while (oldest != next_seq) {
            struct slot *s = &table[oldest & TABLE_MASK];
            if (s->state == ST_PENDING) {
                /* lost: too old, or answers came back for requests sent
                   `reorder` later (the servers answer in order) */
                if (now - s->sent_ns < timeout_ns && max_answered < oldest + 1 + (uint32_t)reorder)
                    break;
                s->state = ST_EXPIRED;
                outstanding--;
                lost++;
            }
            oldest++;
        }
        if (!did) {
            if (now >= t_end && outstanding == 0)
                break;
            if (rate > 0 && now < t_end)
                continue; /* open loop: spin, this core is the generator's */
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            poll(&pfd, 1, 1);
            now = now_ns();
        }
    }
    /* requests still pending at the end count as lost */
    while (oldest != next_seq) {
        struct slot *s = &table[oldest & TABLE_MASK];
        if (s->state == ST_PENDING) lost++;
        oldest++;
    }

    print_result(sent_measured, answered_measured, invalid, duration, warmup, hist_count, sent_total,
                 answered_total, lost, late, send_errors, window, batch, reorder, rate, reasons);
    close(fd);
    return 0;
}

static void print_result(uint64_t sent_measured, uint64_t answered_measured, uint64_t invalid,
                         double duration, double warmup, uint64_t hist_count, uint64_t sent_total,
                         uint64_t answered_total, uint64_t lost, uint64_t late, uint64_t send_errors,
                         int window, int batch, int reorder, double rate, const uint64_t *reasons)
{
    double p50 = -1, p99 = -1, pmax = -1;
    if (hist_count) {
        uint64_t c50 = (hist_count + 1) / 2, c99 = (hist_count * 99 + 99) / 100, acc = 0;
        for (uint32_t us = 0; us <= HIST_US; us++) {
            if (!hist[us]) continue;
            acc += hist[us];
            if (p50 < 0 && acc >= c50) p50 = us;
            if (p99 < 0 && acc >= c99) p99 = us;
            pmax = us;
        }
    }
    printf("{\"sent\": %llu, \"answered\": %llu, \"invalid\": %llu, \"rate\": %.1f, "
           "\"p50_us\": %.0f, \"p99_us\": %.0f, \"max_us\": %.0f, "
           "\"sent_total\": %llu, \"answered_total\": %llu, \"lost\": %llu, \"late\": %llu, "
           "\"socket_errors\": %llu, \"duration_s\": %.3f, \"warmup_s\": %.3f, "
           "\"window\": %d, \"batch\": %d, \"reorder\": %d, \"offered_rate\": %.0f, \"invalid_reasons\": {",
           (unsigned long long)sent_measured, (unsigned long long)answered_measured,
           (unsigned long long)invalid, answered_measured / duration, p50, p99, pmax,
           (unsigned long long)sent_total, (unsigned long long)answered_total,
           (unsigned long long)lost, (unsigned long long)late,
           (unsigned long long)send_errors, duration, warmup, window, batch, reorder, rate);
    int first = 1;
    for (int i = 0; i < R_COUNT; i++) {
        if (!reasons[i]) continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", reason_names[i],
               (unsigned long long)reasons[i]);
        first = 0;
    }
    printf("}}\n");
}

