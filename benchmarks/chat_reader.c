/* The chat benchmark's subscriber load generator in C (benchmarks/chat.py builds it into build/
 * with the machine's compiler and falls back to its Python worker when there is none).
 *
 *     chat_reader CHANNEL TOTAL DEADLINE_S PORT...
 *
 * One WebSocket subscriber per PORT on 127.0.0.1 (/v1/ws, a port may repeat), all in one epoll
 * loop. It speaks to the worker's protocol with benchmarks/chat.py: prints "ready" once every
 * subscriber is subscribed ("not subscribed" if one was refused or the deadline passed first), then
 * one JSON line {"delivered", "last_at", "cpu_s", "frames", "reads", "errors", "latencies"}.
 *
 * The check is the Python worker's: every subscriber must get offsets 1..TOTAL of CHANNEL in order,
 * no gap, no duplicate; a delivery out of order is an error and is not counted. A push line is
 * taken as a message only in the gateway's exact form
 *     {"type":"message","channel":"CHANNEL","offset":N,"epoch":"E","data":"T","at_ms":N}
 * with T the publisher's time.monotonic() as text (the latency is now - T, CLOCK_MONOTONIC being
 * Python's monotonic clock on Linux); the other lines ("ready", "subscribed", "pong", and the
 * channel's "epoch" before its first message) are told apart by their type, and anything else
 * (an epoch change mid-stream too) is an error, so a frame this reader misreads can only
 * make the row fail, never count. Written for this benchmark (no code taken from elsewhere).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BYTES (256 * 1024)
#define ERRORS_MAX 20

typedef struct {
    int fd;
    unsigned char *buf;
    size_t len, cap;
    long expect, got;
    int subscribed, closed;
} Sub;

static const char *channel;
static size_t channel_len;
static long total;
static char *errors[ERRORS_MAX];
static long error_count;
static double *latencies;
static size_t latency_count, latency_cap;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void error(const char *fmt, ...) {
    error_count++;
    if (error_count > ERRORS_MAX) return;
    char *text = malloc(256);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, 256, fmt, ap);
    va_end(ap);
    errors[error_count - 1] = text;
}

static void die(const char *what) {
    fprintf(stderr, "chat_reader: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void write_all(int fd, const unsigned char *data, size_t n) {
    while (n) {
        ssize_t w = write(fd, data, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("write");
        }
        data += w;
        n -= (size_t)w;
    }
}

/* One client frame (masked, as a client must). */
static void send_frame(Sub *s, int opcode, const unsigned char *payload, size_t n) {
    unsigned char out[16 + 4096];
    size_t head = 2;
    if (n > 4096) n = 4096;
    out[0] = 0x80 | (unsigned char)opcode;
    if (n < 126) {
        out[1] = 0x80 | (unsigned char)n;
    } else {
        out[1] = 0x80 | 126;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
        head = 4;
    }
    unsigned char mask[4] = {(unsigned char)rand(), (unsigned char)rand(), (unsigned char)rand(), (unsigned char)rand()};
    memcpy(out + head, mask, 4);
    for (size_t i = 0; i < n; i++) out[head + 4 + i] = payload[i] ^ mask[i % 4];
    write_all(s->fd, out, head + 4 + n);
}

static void connect_sub(Sub *s, int port) {
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s->fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dHJpbWFyYW4tY2hhdC1iZW5jaA==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     port);
    write_all(s->fd, (unsigned char *)req, (size_t)n);
    s->cap = READ_BYTES * 2;
    s->buf = malloc(s->cap);
    s->len = 0;
    for (;;) { /* the response head; bytes after it are the first frames */
        ssize_t r = read(s->fd, s->buf + s->len, s->cap - s->len - 1);
        if (r <= 0) die("closed during the WebSocket upgrade");
        s->len += (size_t)r;
        s->buf[s->len] = 0;
        char *end = strstr((char *)s->buf, "\r\n\r\n");
        if (!end) continue;
        if (strncmp((char *)s->buf, "HTTP/1.1 101 ", 13) != 0) {
            fprintf(stderr, "chat_reader: upgrade refused: %.200s\n", (char *)s->buf);
            exit(2);
        }
        size_t head = (size_t)(end + 4 - (char *)s->buf);
        memmove(s->buf, s->buf + head, s->len - head);
        s->len -= head;
        break;
    }
    s->expect = 1; /* a fresh channel: offsets start at 1 */
    char sub[256];
    n = snprintf(sub, sizeof sub, "{\"id\":1,\"type\":\"subscribe\",\"channel\":\"%s\"}", channel);
    send_frame(s, 0x1, (unsigned char *)sub, (size_t)n);
}

/* p advanced past the literal, or NULL. */
static const char *expect_text(const char *p, const char *end, const char *lit, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

#define LIT(p, end, s) expect_text(p, end, s, sizeof(s) - 1)

static const char *digits(const char *p, const char *end, long *out) {
    long v = 0;
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9' && p - start < 18) v = v * 10 + (*p++ - '0');
    if (p == start) return NULL;
    *out = v;
    return p;
}

/* A string's body up to its closing quote (no escapes in the forms read here), or NULL. */
static const char *string_body(const char *p, const char *end) {
    while (p < end && *p != '"') {
        if (*p == '\\') return NULL;
        p++;
    }
    return p < end ? p : NULL;
}

/* One message line in the gateway's exact form: 1 with its offset and the data's time, else 0. */
static int message_line(const char *p, const char *end, long *offset, double *sent_s) {
    long at_ms;
    const char *q;
    if (!(p = LIT(p, end, "{\"type\":\"message\",\"channel\":\""))) return 0;
    if (!(p = expect_text(p, end, channel, channel_len)) || !(p = LIT(p, end, "\",\"offset\":"))) return 0;
    if (!(p = digits(p, end, offset)) || !(p = LIT(p, end, ",\"epoch\":\"")) || !(p = string_body(p, end))) return 0;
    if (!(p = LIT(p, end, "\",\"data\":\""))) return 0;
    q = p;
    if (!(p = string_body(p, end)) || p - q > 40) return 0;
    char number[48];
    memcpy(number, q, (size_t)(p - q));
    number[p - q] = 0;
    char *stop;
    *sent_s = strtod(number, &stop);
    if (stop == number || *stop) return 0;
    if (!(p = LIT(p, end, "\",\"at_ms\":")) || !(p = digits(p, end, &at_ms)) || !(p = LIT(p, end, "}"))) return 0;
    return p == end;
}

static int has(const char *p, const char *end, const char *needle) {
    return memmem(p, (size_t)(end - p), needle, strlen(needle)) != NULL;
}

static int done, pending_ready;
static double last_at;
static long frames;

/* One data frame: newline-delimited pushes. */
static void on_text(Sub *s, const char *p, const char *end, double at) {
    frames++;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        long offset;
        double sent_s;
        if (message_line(p, line_end, &offset, &sent_s)) {
            if (offset != s->expect) {
                error("offset %ld where %ld was due", offset, s->expect);
                if (offset + 1 > s->expect) s->expect = offset + 1;
            } else {
                s->expect++;
                s->got++;
                if (latency_count == latency_cap) {
                    latency_cap = latency_cap ? latency_cap * 2 : 1 << 16;
                    latencies = realloc(latencies, latency_cap * sizeof *latencies);
                }
                latencies[latency_count++] = at - sent_s;
                if (s->got == total) {
                    done++;
                    last_at = at;
                }
            }
        } else if (has(p, line_end, "\"type\":\"ready\"") || has(p, line_end, "\"type\":\"pong\"")) {
            /* nothing to check */
        } else if (has(p, line_end, "\"type\":\"epoch\"") && s->expect == 1) {
            /* the channel made by the first publish: its epoch, before any message */
        } else if (has(p, line_end, "\"type\":\"subscribed\"") && !s->subscribed) {
            s->subscribed = 1;
            if (--pending_ready == 0) {
                printf("ready\n");
                fflush(stdout);
            }
        } else if (has(p, line_end, "\"type\":\"error\"")) {
            error("%.*s", (int)(line_end - p > 200 ? 200 : line_end - p), p);
            if (!s->subscribed) pending_ready = -1000000; /* a subscribe refused: the row cannot be measured */
        } else {
            error("a push this reader does not know: %.*s", (int)(line_end - p > 150 ? 150 : line_end - p), p);
        }
        p = nl ? nl + 1 : end;
    }
}

/* The whole frames in s->buf (taken out of it). */
static void on_bytes(Sub *s, double at) {
    size_t pos = 0;
    unsigned char *b = s->buf;
    while (s->len - pos >= 2) {
        unsigned b0 = b[pos];
        uint64_t n = b[pos + 1] & 0x7F;
        size_t start = pos + 2;
        if (n == 126) {
            if (s->len - pos < 4) break;
            n = ((uint64_t)b[pos + 2] << 8) | b[pos + 3];
            start = pos + 4;
        } else if (n == 127) {
            if (s->len - pos < 10) break;
            n = 0;
            for (int i = 2; i < 10; i++) n = (n << 8) | b[pos + i];
            start = pos + 10;
        }
        if (s->len - start < n) {
            if (start + n > s->cap) { /* a frame larger than the buffer: make room for it whole */
                s->cap = start + n + READ_BYTES;
                s->buf = b = realloc(s->buf, s->cap);
            }
            break;
        }
        if (!(b0 & 0x80)) {
            error("a fragmented frame (the gateway sends whole frames)");
            s->closed = 1;
            return;
        }
        int opcode = b0 & 0x0F;
        const char *payload = (const char *)b + start;
        if (opcode == 0x9) {
            send_frame(s, 0xA, (const unsigned char *)payload, n);
        } else if (opcode == 0x8) {
            int code = n >= 2 ? (b[start] << 8) | b[start + 1] : 0;
            error("closed by the gateway: %d %.*s", code, (int)(n > 2 ? (n - 2 > 150 ? 150 : n - 2) : 0), payload + 2);
            s->closed = 1;
        } else if (opcode == 0x1 || opcode == 0x0 || opcode == 0x2) {
            on_text(s, payload, payload + n, at);
        }
        pos = start + n;
    }
    if (pos) {
        memmove(s->buf, s->buf + pos, s->len - pos);
        s->len -= pos;
    }
}

static void print_json_string(const char *text) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: chat_reader CHANNEL TOTAL DEADLINE_S PORT...\n");
        return 2;
    }
    channel = argv[1];
    channel_len = strlen(channel);
    total = atol(argv[2]);
    double give_up = now_s() + atof(argv[3]);
    int count = argc - 4;
    srand((unsigned)getpid());
    Sub *subs = calloc((size_t)count, sizeof *subs);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    pending_ready = count;
    for (int i = 0; i < count; i++) {
        connect_sub(&subs[i], atoi(argv[4 + i]));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &subs[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, subs[i].fd, &ev) < 0) die("epoll_ctl");
    }
    for (int i = 0; i < count; i++)
        if (subs[i].len) on_bytes(&subs[i], now_s()); /* frames that came with the upgrade */
    double cpu_start = -1;
    long reads = 0;
    struct epoll_event events[256];
    int open_count = count;
    while (done < count && open_count > 0 && pending_ready >= 0) {
        double now = now_s();
        if (now > give_up) break;
        if (pending_ready == 0 && cpu_start < 0) { /* count from the moment every subscriber is in */
            cpu_start = cpu_s();
            frames = reads = 0;
        }
        int n = epoll_wait(ep, events, 256, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            Sub *s = events[i].data.ptr;
            if (s->closed) continue;
            if (s->cap - s->len < READ_BYTES) {
                s->cap = s->len + READ_BYTES * 2;
                s->buf = realloc(s->buf, s->cap);
            }
            ssize_t r = read(s->fd, s->buf + s->len, s->cap - s->len);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                error("read: %s", strerror(errno));
                r = 0;
            }
            if (r == 0) {
                error("connection closed");
                s->closed = 1;
            } else {
                s->len += (size_t)r;
                reads++;
                on_bytes(s, now_s());
            }
            if (s->closed) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                open_count--;
            }
        }
    }
    double cpu = cpu_start >= 0 ? cpu_s() - cpu_start : 0.0;
    long delivered = 0;
    for (int i = 0; i < count; i++) {
        delivered += subs[i].got;
        close(subs[i].fd);
    }
    if (pending_ready != 0) {
        printf("not subscribed\n"); /* the parent stops waiting; the errors say why */
        if (pending_ready > 0) error("%d subscriber(s) not subscribed by the deadline", pending_ready);
    }
    printf("{\"delivered\": %ld, \"last_at\": %.6f, \"cpu_s\": %.6f, \"frames\": %ld, \"reads\": %ld, \"errors\": [",
           delivered, last_at, cpu, frames, reads);
    for (long i = 0; i < error_count && i < ERRORS_MAX; i++) {
        if (i) printf(", ");
        print_json_string(errors[i]);
    }
    if (error_count > ERRORS_MAX) printf(", \"... %ld more\"", error_count - ERRORS_MAX);
    printf("], \"latencies\": [");
    for (size_t i = 0; i < latency_count; i++) printf(i ? ",%.6f" : "%.6f", latencies[i]);
    printf("]}\n");
    fflush(stdout);
    return 0;
}
