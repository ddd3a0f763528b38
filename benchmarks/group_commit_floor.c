/* The machine's floor for durable appends from many threads, in C, without Python.
 *
 * Run by benchmarks/bench_group_commit_floor.py (which compiles it with cc -O2):
 *   group_commit_floor PATH THREADS GATHER_US SECONDS RECORD_BYTES
 * THREADS pthreads each append one record at a time and return only when it is on
 * disk. The first to arrive while no fdatasync runs leads a round: it waits GATHER_US
 * microseconds for others to join (0: none), takes every record queued so far, writes
 * them with one pwrite and fdatasyncs; the followers of that round sleep on a
 * condition variable until it ends (one broadcast). The simplest sound group commit,
 * free of the GIL and of any Python: what the kernel and the disk allow. With one
 * thread it is one pwrite + fdatasync per record. Prints "records_per_s <float>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static char *queue, *spare;
static size_t queued, cap;
static uint64_t next_seq, durable; /* records below durable are on disk */
static int syncing, fd, gather_us;
static off_t file_off;
static atomic_int stop;
static long counts[MAX_THREADS];
static size_t record_bytes;

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void append_durable(const char *rec, size_t n) {
    pthread_mutex_lock(&mu);
    while (queued + n > cap) /* a full queue waits for the round in progress */
        pthread_cond_wait(&done_cv, &mu);
    memcpy(queue + queued, rec, n);
    queued += n;
    uint64_t seq = next_seq++;
    while (durable <= seq) {
        if (syncing) {
            pthread_cond_wait(&done_cv, &mu);
            continue;
        }
        syncing = 1;
        if (gather_us) {
            pthread_mutex_unlock(&mu);
            usleep((useconds_t)gather_us);
            pthread_mutex_lock(&mu);
        }
        char *batch = queue;
        size_t len = queued;
        uint64_t upto = next_seq;
        queue = spare;
        spare = batch;
        queued = 0;
        off_t at = file_off;
        file_off += (off_t)len;
        pthread_mutex_unlock(&mu);
        if (pwrite(fd, batch, len, at) != (ssize_t)len) die("pwrite");
        if (fdatasync(fd) != 0) die("fdatasync");
        pthread_mutex_lock(&mu);
        durable = upto;
        syncing = 0;
        pthread_cond_broadcast(&done_cv);
    }
    pthread_mutex_unlock(&mu);
}

static void *appender(void *arg) {
    long i = (long)arg;
    char *rec = calloc(1, record_bytes);
    if (!rec) die("calloc");
    long k = 0;
    while (!atomic_load(&stop)) {
        append_durable(rec, record_bytes);
        k++;
    }
    counts[i] = k;
    free(rec);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PATH THREADS GATHER_US SECONDS RECORD_BYTES\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[2]);
    gather_us = atoi(argv[3]);
    double seconds = atof(argv[4]);
    record_bytes = (size_t)atol(argv[5]);
    if (threads < 1 || threads > MAX_THREADS || gather_us < 0 || seconds <= 0 ||
        record_bytes < 1 || record_bytes > (1 << 20)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die("open");
    cap = record_bytes * (size_t)threads * 2;
    queue = malloc(cap);
    spare = malloc(cap);
    if (!queue || !spare) die("malloc");
    pthread_t tid[MAX_THREADS];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < threads; i++)
        if (pthread_create(&tid[i], NULL, appender, (void *)i) != 0) die("pthread_create");
    struct timespec nap = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&nap, NULL);
    atomic_store(&stop, 1);
    long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        total += counts[i];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("records_per_s %.1f\n", (double)total / dt);
    close(fd);
    return 0;
}
