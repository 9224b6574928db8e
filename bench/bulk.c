/* Bulk tunnel load for bench/proxy.py: a C sender and a C receiver, so that neither end
 * of the tunnel figure is a Python loop (which capped "direct" far below the machine).
 *
 *   bulk serve PORT                       accept; per connection read "N\n", send N bytes
 *   bulk get PORT PROXY_PORT TOTAL STREAMS  STREAMS parallel downloads of TOTAL/STREAMS
 *                                          bytes each from 127.0.0.1:PORT, through an HTTP
 *                                          CONNECT proxy on 127.0.0.1:PROXY_PORT (0: direct);
 *                                          prints bytes/s over the wall time of the transfer
 *   bulk hold PORT PROXY_PORT COUNT SECONDS  open COUNT tunnels to the HTTP origin on PORT,
 *                                          one GET through each, print "ready", hold them
 *                                          idle SECONDS, then close (idle-CPU figure)
 *
 * Built by bench/proxy.py with `cc -O2 -pthread` (Debian: build-essential).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (1 << 20)

static char block[BLOCK];

static void die(const char *what) { perror(what); exit(1); }

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return fd;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; die("send"); }
        p += w; n -= (size_t)w;
    }
}

/* CONNECT through the proxy; returns once the 200 head has been read (byte by byte, so
 * nothing of the tunnel's own data is consumed). */
static int open_stream(int port, int proxy) {
    if (!proxy) return dial(port);
    int fd = dial(proxy);
    char req[128], head[1024];
    int n = snprintf(req, sizeof req, "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                     port, port);
    send_all(fd, req, (size_t)n);
    size_t got = 0;
    while (got < sizeof head - 1) {
        ssize_t r = recv(fd, head + got, 1, 0);
        if (r <= 0) { fprintf(stderr, "tunnel closed before its head\n"); exit(1); }
        got++;
        if (got >= 4 && !memcmp(head + got - 4, "\r\n\r\n", 4)) break;
    }
    head[got] = 0;
    if (!strstr(head, " 200")) { fprintf(stderr, "CONNECT refused: %s\n", head); exit(1); }
    return fd;
}

struct job { int fd; long long bytes; };

static void *download(void *arg) {
    struct job *j = arg;
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n", j->bytes);
    send_all(j->fd, line, (size_t)n);
    char *buf = malloc(BLOCK);
    long long left = j->bytes;
    while (left > 0) {
        ssize_t r = recv(j->fd, buf, BLOCK, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { fprintf(stderr, "stream closed early (%lld left)\n", left); exit(1); }
        left -= r;
    }
    free(buf);
    close(j->fd);
    return NULL;
}

static void *serve_one(void *arg) {
    int fd = (int)(long)arg;
    char line[32];
    size_t got = 0;
    while (got < sizeof line - 1) {
        ssize_t r = recv(fd, line + got, 1, 0);
        if (r <= 0) { close(fd); return NULL; }
        if (line[got++] == '\n') break;
    }
    line[got] = 0;
    long long left = atoll(line);
    while (left > 0) {
        size_t n = left < BLOCK ? (size_t)left : BLOCK;
        ssize_t w = send(fd, block, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; break; }
        left -= w;
    }
    close(fd);
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    memset(block, 0x5a, sizeof block);
    if (argc == 3 && !strcmp(argv[1], "serve")) {
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 1024) < 0) die("listen");
        for (;;) {
            int fd = accept(s, NULL, NULL);
            if (fd < 0) continue;
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, 64 * 1024);
            if (pthread_create(&t, &attr, serve_one, (void *)(long)fd)) close(fd);
        }
    }
    if (argc == 6 && !strcmp(argv[1], "get")) {
        int port = atoi(argv[2]), proxy = atoi(argv[3]), streams = atoi(argv[5]);
        long long total = atoll(argv[4]);
        struct job *jobs = calloc((size_t)streams, sizeof *jobs);
        pthread_t *threads = calloc((size_t)streams, sizeof *threads);
        for (int i = 0; i < streams; i++) {
            jobs[i].fd = open_stream(port, proxy);
            jobs[i].bytes = total / streams;
        }
        double t0 = now();
        for (int i = 0; i < streams; i++) pthread_create(&threads[i], NULL, download, &jobs[i]);
        for (int i = 0; i < streams; i++) pthread_join(threads[i], NULL);
        double dt = now() - t0;
        printf("%.0f\n", (double)(total / streams * streams) / dt);
        return 0;
    }
    if (argc == 6 && !strcmp(argv[1], "hold")) {
        int port = atoi(argv[2]), proxy = atoi(argv[3]), count = atoi(argv[4]);
        int *fds = calloc((size_t)count, sizeof *fds);
        /* One request through each tunnel first, so that it is past the proxy's first-bytes
         * check and relaying, then idle. PORT is the HTTP origin. */
        char req[128], buf[4096];
        int n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", port);
        for (int i = 0; i < count; i++) {
            fds[i] = open_stream(port, proxy);
            send_all(fds[i], req, (size_t)n);
            size_t got = 0;
            while (got < 13 || memcmp(buf + got - 13, "hello, world\n", 13)) {
                ssize_t r = recv(fds[i], buf + got, sizeof buf - got, 0);
                if (r <= 0) { fprintf(stderr, "tunnel %d closed\n", i); exit(1); }
                got += (size_t)r;
                if (got >= sizeof buf) { fprintf(stderr, "odd answer\n"); exit(1); }
            }
        }
        printf("ready\n");
        fflush(stdout);
        sleep((unsigned)atoi(argv[5]));
        for (int i = 0; i < count; i++) close(fds[i]);
        return 0;
    }
    fprintf(stderr, "usage: bulk serve PORT | bulk get PORT PROXY TOTAL STREAMS | "
                    "bulk hold PORT PROXY COUNT SECONDS\n");
    return 2;
}
