/* A tiny static HTTP server standing in for the runtime inside test images.
 * healthd --port N [--models DIR] [--never-ready]   serve /v2/health/{live,ready}
 * healthd --probe PATH --port N                      exit 0 when GET PATH is 200
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static int probe(int port, const char *path) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n\r\n", path);
    if (write(s, req, strlen(req)) < 0) return 1;
    char buf[64] = {0};
    if (read(s, buf, sizeof buf - 1) < 12) return 1;
    return strncmp(buf + 9, "200", 3) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    int port = 8000, never_ready = 0;
    const char *probe_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--never-ready")) never_ready = 1;
        else if (!strcmp(argv[i], "--probe") && i + 1 < argc) probe_path = argv[++i];
        else if (!strcmp(argv[i], "--models") && i + 1 < argc) i++;
    }
    if (probe_path) return probe(port, probe_path);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); return 2; }
    listen(s, 16);
    fprintf(stderr, "healthd listening on %d\n", port);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char buf[4096] = {0};
        ssize_t n = read(c, buf, sizeof buf - 1);
        const char *status = "404 Not Found";
        if (n > 0 && !strncmp(buf, "GET /v2/health/live ", 20)) status = "200 OK";
        if (n > 0 && !strncmp(buf, "GET /v2/health/ready ", 21))
            status = never_ready ? "503 Service Unavailable" : "200 OK";
        char resp[256];
        int len = snprintf(resp, sizeof resp,
                           "HTTP/1.0 %s\r\nContent-Type: application/json\r\n"
                           "Content-Length: 2\r\n\r\n{}", status);
        if (write(c, resp, len) < 0) perror("write");
        close(c);
    }
}
