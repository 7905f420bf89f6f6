/*
 * QD1 4 KiB random-read latency from an isolated CPU, through isonvme's
 * C API: the thread pins itself to the CPU, takes that CPU's handle, and
 * submits, rings and polls without locks or system calls.
 *
 *   cc -O2 -Icapi/include capi/examples/latency.c -Ltarget/release -lisonvme -o latency
 *   ./latency [device] [reads] [cpu]      (default: sim,size=64M 20000, the last CPU)
 *
 * Without isolcpus= on this host the chosen CPU is treated as isolated for
 * the run (a what-if); with it, give an isolated CPU.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "isonvme.h"

static int fail(const char *what, int code)
{
	fprintf(stderr, "latency: %s: %s (%s)\n", what, isonvme_last_error(), isonvme_strerror(code));
	return 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	const char *device = argc > 1 ? argv[1] : "sim,size=64M";
	long reads = argc > 2 ? atol(argv[2]) : 20000;
	long online = sysconf(_SC_NPROCESSORS_ONLN);
	int cpu = argc > 3 ? atoi(argv[3]) : (int)(online - 1);
	if (reads <= 0 || cpu < 0 || cpu >= online) {
		fprintf(stderr, "usage: latency [device] [reads > 0] [cpu < %ld]\n", online);
		return 2;
	}
	isonvme_controller *controller = NULL;
	int code = isonvme_controller_open(device, NULL, &controller);
	if (code < 0)
		return fail("opening the controller", code);
	uint64_t blocks = 0;
	uint32_t block_size = 0;
	code = isonvme_controller_namespace(controller, 1, &blocks, &block_size);
	if (code < 0) {
		isonvme_controller_close(controller);
		return fail("namespace 1", code);
	}

	isonvme_runtime_options options;
	isonvme_runtime_options_default(&options);
	char isolated[16];
	snprintf(isolated, sizeof isolated, "%d", cpu);
	if (online > 1)
		options.isolated = isolated;
	isonvme_runtime *runtime = NULL;
	code = isonvme_runtime_open(controller, &options, &runtime); /* takes the controller */
	if (code < 0)
		return fail("starting the runtime", code);
	/* Pinned after the runtime opened: threads made before (the
	 * simulator's) keep the process's CPUs; the runtime's own threads go
	 * to housekeeping CPUs either way. */
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0) {
		perror("latency: pinning to the CPU");
		isonvme_runtime_close(runtime);
		return 1;
	}
	char *layout = isonvme_runtime_layout(runtime);
	printf("isonvme %s, %s; reading from CPU %d\n%s\n", isonvme_version(), device, cpu, layout);
	isonvme_string_free(layout);

	isonvme_handle *handle = NULL;
	isonvme_buffer *buffer = NULL;
	uint64_t *latency = calloc((size_t)reads, sizeof *latency);
	int status = 1;
	if ((code = isonvme_runtime_handle(runtime, (uint32_t)cpu, &handle)) < 0) {
		fail("taking the CPU's handle", code);
		goto out;
	}
	if ((code = isonvme_buffer_alloc(runtime, 4096, &buffer)) < 0 || !latency) {
		fail("allocating", code);
		goto out;
	}
	uint32_t per_io = 4096 / block_size;
	uint64_t units = blocks / per_io, state = 88172645463325252u;
	uint64_t start = now_ns();
	for (long i = 0; i < reads; i++) {
		state ^= state << 13, state ^= state >> 7, state ^= state << 17;
		uint64_t lba = (state % units) * per_io;
		uint64_t t0 = now_ns();
		if ((code = isonvme_submit_read(handle, 1, lba, per_io, buffer, (uint64_t)i)) < 0) {
			fail("submitting a read", code);
			goto out;
		}
		isonvme_ring(handle);
		isonvme_completion done;
		int n;
		while ((n = isonvme_poll(handle, &done, 1)) == 0)
			;
		latency[i] = now_ns() - t0;
		if (n < 0) {
			fail("polling", n);
			goto out;
		}
		if (done.status != 0 || done.tag != (uint64_t)i || done.buffer != buffer) {
			char text[128];
			isonvme_status_string(done.status, text, sizeof text);
			fprintf(stderr, "latency: read %ld: %s (tag %llu)\n", i, text,
				(unsigned long long)done.tag);
			goto out;
		}
	}
	double seconds = (double)(now_ns() - start) / 1e9;
	qsort(latency, (size_t)reads, sizeof *latency, by_value);
	printf("%ld reads in %.3f s (%.0f IOPS); latency in microseconds: p50 %.2f, p99 %.2f, p99.9 %.2f, max %.2f\n",
	       reads, seconds, reads / seconds, latency[reads / 2] / 1e3,
	       latency[reads * 99 / 100] / 1e3, latency[reads * 999 / 1000] / 1e3,
	       latency[reads - 1] / 1e3);
	isonvme_isolation_report report;
	isonvme_runtime_isolation_report(runtime, &report);
	printf("completions reaped on isolated CPUs: %llu, on housekeeping CPUs: %llu\n",
	       (unsigned long long)report.completions_on_isolated,
	       (unsigned long long)report.completions_on_housekeeping);
	status = report.completions_on_isolated == 0 ? 0 : 1;
out:
	free(latency);
	isonvme_buffer_free(buffer);
	isonvme_handle_free(handle);
	code = isonvme_runtime_close(runtime);
	if (code < 0)
		return fail("closing the runtime", code);
	return status;
}
