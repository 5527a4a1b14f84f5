// SPDX-License-Identifier: Apache-2.0
/* A Kafka-framed client and server on loopback, for the agent's benchmarks.
 *
 *   loadgen REQUEST_FRAME RESPONSE_FRAME RATE SECONDS [WINDOW]
 *
 * Forks a server that answers every request with RESPONSE_FRAME (its correlation id set to the
 * request's), then sends REQUEST_FRAME RATE times a second (0: as fast as the window allows) for
 * SECONDS, one write() per request, each with a fresh correlation id and at most WINDOW unanswered.
 * The frames are whole Kafka frames, size field included (a Produce request and its response taken
 * from recorded traffic). Prints one line: requests answered, seconds, client CPU seconds. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	fseek(f, 0, SEEK_END);
	*len = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *buf = malloc(*len);
	if (fread(buf, 1, *len, f) != *len) {
		perror(path);
		exit(2);
	}
	fclose(f);
	return buf;
}

static void write_all(int fd, const unsigned char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			perror("write");
			exit(3);
		}
		p += w;
		n -= w;
	}
}

/* Reads whole frames from fd; calls fn(frame, len) for each. Returns at EOF. */
static void read_frames(int fd, void (*fn)(unsigned char *, size_t, void *), void *arg)
{
	size_t cap = 1 << 20, have = 0;
	unsigned char *buf = malloc(cap);
	for (;;) {
		ssize_t r = read(fd, buf + have, cap - have);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			break;
		}
		have += r;
		size_t pos = 0;
		while (have - pos >= 4) {
			uint32_t size = ntohl(*(uint32_t *)(buf + pos));
			if (have - pos < 4 + size)
				break;
			fn(buf + pos, 4 + size, arg);
			pos += 4 + size;
		}
		memmove(buf, buf + pos, have - pos);
		have -= pos;
		if (have == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
	}
	free(buf);
}

struct server {
	int fd;
	unsigned char *resp;
	size_t resp_len;
};

static void answer(unsigned char *frame, size_t len, void *arg)
{
	struct server *s = arg;
	memcpy(s->resp + 4, frame + 8, 4);  /* response correlation id = request's */
	write_all(s->fd, s->resp, s->resp_len);
}

static atomic_long answered;

static void count_response(unsigned char *frame, size_t len, void *arg)
{
	atomic_fetch_add(&answered, 1);
}

static void *receiver(void *arg)
{
	read_frames(*(int *)arg, count_response, NULL);
	return NULL;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s REQUEST_FRAME RESPONSE_FRAME RATE SECONDS [WINDOW]\n", argv[0]);
		return 2;
	}
	size_t req_len, resp_len;
	unsigned char *req = slurp(argv[1], &req_len);
	unsigned char *resp = slurp(argv[2], &resp_len);
	double rate = atof(argv[3]), seconds = atof(argv[4]);
	long window = argc > 5 ? atol(argv[5]) : 64;

	int lst = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(addr);
	if (bind(lst, (struct sockaddr *)&addr, sizeof(addr)) || listen(lst, 1) ||
	    getsockname(lst, (struct sockaddr *)&addr, &alen)) {
		perror("listen");
		return 3;
	}
	pid_t server = fork();
	if (server == 0) {
		struct server s = { .fd = accept(lst, NULL, NULL), .resp = resp, .resp_len = resp_len };
		int one = 1;
		setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		read_frames(s.fd, answer, &s);
		_exit(0);
	}
	close(lst);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		perror("connect");
		return 3;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	pthread_t rx;
	pthread_create(&rx, NULL, receiver, &fd);

	double start = now(), end = start + seconds;
	long sent = 0;
	uint32_t corr = 1;
	for (;;) {
		double t = now();
		if (t >= end)
			break;
		if (rate > 0) {
			double due = start + sent / rate;
			if (due > t) {
				struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)((due - t) * 1e9) };
				nanosleep(&ts, NULL);
				continue;
			}
		}
		if (sent - atomic_load(&answered) >= window) {
			sched_yield();
			continue;
		}
		uint32_t c = htonl(corr++ & 0x7fffffff);
		memcpy(req + 8, &c, 4);
		write_all(fd, req, req_len);
		sent++;
	}
	while (atomic_load(&answered) < sent && now() < end + 10)
		usleep(1000);
	double elapsed = now() - start;
	shutdown(fd, SHUT_WR);
	pthread_join(rx, NULL);
	close(fd);
	int status;
	waitpid(server, &status, 0);
	struct rusage self, child;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &child);
	double cpu = self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6 + self.ru_stime.tv_sec + self.ru_stime.tv_usec / 1e6
		   + child.ru_utime.tv_sec + child.ru_utime.tv_usec / 1e6 + child.ru_stime.tv_sec + child.ru_stime.tv_usec / 1e6;
	printf("%ld %.6f %.6f\n", atomic_load(&answered), elapsed, cpu);
	return 0;
}
