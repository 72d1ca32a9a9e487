/*
 * joinload - replays prepared STUN requests (natsalon JOINs) at a salon on
 * loopback, as fast as it answers, and counts the answers.
 *
 *   joinload --port P --file F --ports A,B [--window N] [--timeout-ms MS] [--spin-us US]
 *
 * F holds records: 1 byte socket index (0 or 1), 2 bytes big-endian length,
 * the datagram.  Socket i is bound to 127.0.0.1:<i-th of --ports> (the
 * harness computed the salon's cookies for those source ports).  Each
 * request's transaction id starts with its 4-byte big-endian index in F.
 *
 * Closed loop: at most --window requests outstanding; one not answered
 * within --timeout-ms counts as lost and frees its place.  An answer is
 * matched to its request by that index; answers are counted by STUN class
 * (success, error), and indications (pushed by the salon: a member's
 * introduction) separately.  Prints one JSON line.  Only 127.0.0.0/8.
 *
 * With nothing to read, it keeps polling its sockets (yielding the core to
 * whatever else is runnable on it) for --spin-us microseconds (default
 * 2000) before it sleeps in poll(): on loopback the sender of a datagram
 * pays in its own system time for waking a sleeping receiver, a cost the
 * salon does not have towards clients on other hosts, so a generator that
 * slept between answers would add it to the salon's figures.  --spin-us 0
 * sleeps at once (as before).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct req {
    const uint8_t *data;
    uint16_t len;
    uint8_t sock;
    uint8_t state; /* 0 unsent, 1 pending, 2 answered, 3 lost */
    uint64_t sent;
};

int main(int argc, char **argv)
{
    int port = 0, window = 256;
    double timeout_ms = 500, spin_us = 2000;
    const char *file = NULL, *ports = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--file")) file = argv[i + 1];
        else if (!strcmp(argv[i], "--ports")) ports = argv[i + 1];
        else if (!strcmp(argv[i], "--window")) window = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--timeout-ms")) timeout_ms = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--spin-us")) spin_us = atof(argv[i + 1]);
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    if (!port || !file || !ports) {
        fprintf(stderr, "usage: joinload --port P --file F --ports A,B [--window N] [--timeout-ms MS] [--spin-us US]\n");
        return 2;
    }
    FILE *f = fopen(file, "rb");
    if (!f) { perror(file); return 1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(size);
    if (fread(buf, 1, size, f) != (size_t)size) { perror("read"); return 1; }
    fclose(f);
    size_t n = 0;
    for (long off = 0; off + 3 <= size; n++) off += 3 + (buf[off + 1] << 8 | buf[off + 2]);
    struct req *reqs = calloc(n, sizeof *reqs);
    long off = 0;
    for (size_t i = 0; i < n; i++) {
        reqs[i].sock = buf[off];
        reqs[i].len = buf[off + 1] << 8 | buf[off + 2];
        reqs[i].data = buf + off + 3;
        off += 3 + reqs[i].len;
    }

    int fds[2];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    const char *p = ports;
    for (int s = 0; s < 2; s++) {
        int sp = atoi(p);
        const char *comma = strchr(p, ',');
        p = comma ? comma + 1 : p;
        fds[s] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        int big = 4 << 20;
        setsockopt(fds[s], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(sp)};
        inet_pton(AF_INET, "127.0.0.1", &me.sin_addr);
        if (bind(fds[s], (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }
        if (connect(fds[s], (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 1; }
    }

    uint64_t timeout = (uint64_t)(timeout_ms * 1e6), spin = (uint64_t)(spin_us * 1e3), idle_since = 0;
    size_t next = 0, oldest = 0, done = 0;
    long outstanding = 0, success = 0, error = 0, indications = 0, lost = 0, unknown = 0, dup = 0;
    uint8_t in[2048];
    uint64_t start = now_ns(), last_answer = start;
    while (done < n) {
        uint64_t t = now_ns();
        while (next < n && outstanding < window) {
            struct req *r = &reqs[next];
            if (send(fds[r->sock], r->data, r->len, 0) < 0) {
                if (errno == EAGAIN || errno == ENOBUFS) break;
                perror("send");
                return 1;
            }
            r->state = 1;
            r->sent = t;
            outstanding++;
            next++;
        }
        int got = 0;
        for (int s = 0; s < 2; s++) {
            for (;;) {
                ssize_t len = recv(fds[s], in, sizeof in, 0);
                if (len < 0) break;
                got++;
                if (len < 20) { unknown++; continue; }
                uint16_t type = in[0] << 8 | in[1];
                int cls = (type & 0x0100) >> 7 | (type & 0x0010) >> 4;
                if (cls == 1) { indications++; continue; }
                uint32_t idx = (uint32_t)in[8] << 24 | in[9] << 16 | in[10] << 8 | in[11];
                if (idx >= n || (cls != 2 && cls != 3)) { unknown++; continue; }
                if (reqs[idx].state != 1) { dup++; continue; }
                reqs[idx].state = 2;
                outstanding--;
                done++;
                if (cls == 2) success++; else error++;
                last_answer = now_ns();
            }
        }
        t = now_ns();
        while (oldest < next && reqs[oldest].state != 1) oldest++;
        while (oldest < next && reqs[oldest].state == 1 && t - reqs[oldest].sent > timeout) {
            reqs[oldest].state = 3;
            outstanding--;
            done++;
            lost++;
            oldest++;
            while (oldest < next && reqs[oldest].state != 1) oldest++;
        }
        if (got) {
            idle_since = 0;
        } else if (!idle_since) {
            idle_since = t;
        } else if (t - idle_since < spin) {
            sched_yield();
        } else {
            struct pollfd pf[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
            poll(pf, 2, 1);
        }
    }
    /* indications may trail the last answer a little */
    uint64_t end = now_ns();
    for (uint64_t until = end + 50000000ull; now_ns() < until;) {
        for (int s = 0; s < 2; s++) {
            ssize_t len;
            while ((len = recv(fds[s], in, sizeof in, 0)) >= 20) {
                uint16_t type = in[0] << 8 | in[1];
                if (((type & 0x0100) >> 7 | (type & 0x0010) >> 4) == 1) indications++;
            }
        }
        struct pollfd pf[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        poll(pf, 2, 5);
    }
    double seconds = (last_answer - start) / 1e9;
    printf("{\"sent\": %zu, \"success\": %ld, \"error\": %ld, \"indications\": %ld, \"lost\": %ld, "
           "\"unknown\": %ld, \"duplicate\": %ld, \"seconds\": %.6f}\n",
           n, success, error, indications, lost, unknown, dup, seconds);
    return 0;
}
