/* The C API's contract at its edges: NULLs and bad values give error
 * codes and messages, never a crash; buffers in flight are protected. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "isonvme.h"

static int failures;

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			printf("FAILED line %d: %s (last error: %s)\n", __LINE__, \
			       #cond, isonvme_last_error());                  \
			failures++;                                          \
		}                                                            \
	} while (0)

int main(void)
{
	isonvme_controller *controller = NULL;
	CHECK(isonvme_controller_open(NULL, NULL, &controller) == ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(strstr(isonvme_last_error(), "name is NULL") != NULL);
	CHECK(isonvme_controller_open("sim,size=banana", NULL, &controller) ==
	      ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(strstr(isonvme_last_error(), "size") != NULL);
	CHECK(controller == NULL);
	CHECK(isonvme_poll(NULL, NULL, 1) == ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(isonvme_submit_read(NULL, 1, 0, 1, NULL, 0) == ISONVME_ERROR_INVALID_ARGUMENT);
	isonvme_ring(NULL);
	isonvme_handle_free(NULL);
	CHECK(isonvme_runtime_close(NULL) == 0);
	CHECK(strstr(isonvme_strerror(ISONVME_ERROR_DEVICE_REMOVED), "removed") != NULL);

	/* The simulator raises two asynchronous events along the way. */
	CHECK(isonvme_controller_open("sim,size=4M,fault=event:ns-changed@2+event:health@3", NULL,
				      &controller) == 0);
	isonvme_runtime_options options;
	isonvme_runtime_options_default(&options);
	options.isolated = "1";
	isonvme_runtime *runtime = NULL;
	CHECK(isonvme_runtime_open(controller, &options, &runtime) == 0);
	isonvme_handle *handle = NULL, *again = NULL;
	CHECK(isonvme_runtime_handle(runtime, 1, &handle) == 0);
	CHECK(isonvme_runtime_handle(runtime, 1, &again) == ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(strstr(isonvme_last_error(), "already taken") != NULL);
	isonvme_buffer *buffer = NULL;
	CHECK(isonvme_buffer_alloc(runtime, 4096, &buffer) == 0);
	CHECK(isonvme_submit_read(handle, 1, 0, 1, buffer, 7) == 0);
	CHECK(isonvme_buffer_data(buffer) == NULL); /* in flight */
	CHECK(isonvme_buffer_free(buffer) == ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(isonvme_poll(handle, NULL, 1) == ISONVME_ERROR_INVALID_ARGUMENT);
	isonvme_ring(handle);
	isonvme_completion done;
	int n;
	while ((n = isonvme_poll(handle, &done, 1)) == 0)
		;
	CHECK(n == 1 && done.tag == 7 && done.status == 0 && done.buffer == buffer);
	CHECK(isonvme_buffer_data(buffer) != NULL);
	/* Past the namespace: refused at submit, the buffer stays usable. */
	CHECK(isonvme_submit_read(handle, 1, 1ull << 40, 1, buffer, 8) ==
	      ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(strstr(isonvme_last_error(), "beyond namespace") != NULL);
	CHECK(isonvme_buffer_data(buffer) != NULL);
	/* A flush and the blocking helper. */
	uint32_t dw0 = 1;
	CHECK(isonvme_run(handle, 0, 1, 0, 0, NULL, 1000000, &dw0) == 0);
	CHECK(isonvme_run(handle, 2, 1, 0, 1, buffer, 1000000, NULL) == 0);
	CHECK(isonvme_run(handle, 9, 1, 0, 1, buffer, 1000000, NULL) ==
	      ISONVME_ERROR_INVALID_ARGUMENT);
	/* The offline rule: CPU 0 is the last housekeeping CPU serving 1. */
	CHECK(isonvme_can_offline(runtime, 0) == 0);
	CHECK(isonvme_can_offline(runtime, 1) == 1);
	char *plan = isonvme_runtime_plan_json(runtime);
	CHECK(plan != NULL && strstr(plan, "\"housekeeping\"") != NULL);
	isonvme_string_free(plan);
	isonvme_cpu_counters counters;
	CHECK(isonvme_runtime_cpu_counters(runtime, 1, &counters) == 0);
	CHECK(counters.submitted == 3 && counters.completed == 3);
	char text[96];
	isonvme_status_string(0x4002 | (1 << 8), text, sizeof text);
	CHECK(strstr(text, "do not retry") != NULL);
	/* The events, one at a time (the second waits for the next call). */
	isonvme_async_event events[2];
	int got = 0;
	CHECK(isonvme_runtime_async_events(runtime, NULL, 1) == ISONVME_ERROR_INVALID_ARGUMENT);
	for (int tries = 0; got < 2 && tries < 5000; tries++) {
		int more = isonvme_runtime_async_events(runtime, &events[got], 1);
		CHECK(more == 0 || more == 1);
		got += more > 0 ? more : 0;
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
	CHECK(got == 2);
	CHECK(isonvme_runtime_async_events(runtime, events, 2) == 0);
	CHECK(events[0].event_type == 2 && events[0].info == 0 && events[0].log_page == 0x04);
	CHECK(events[1].event_type == 1 && events[1].log_page == 0x02);
	isonvme_async_event_string(&events[0], text, sizeof text);
	CHECK(strstr(text, "namespace attribute changed") != NULL);
	isonvme_async_event_string(&events[1], text, sizeof text);
	CHECK(strstr(text, "health") != NULL);
	uint64_t micros = 0;
	CHECK(isonvme_runtime_reset(runtime, 10000, &micros) == 0 && micros > 0);
	CHECK(isonvme_run(handle, 2, 1, 0, 1, buffer, 5000000, NULL) == 0); /* after the reset */
	isonvme_recovery_counters recovery;
	CHECK(isonvme_runtime_recovery(NULL, &recovery) == ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(isonvme_runtime_recovery(runtime, NULL) == ISONVME_ERROR_INVALID_ARGUMENT);
	CHECK(isonvme_runtime_recovery(runtime, &recovery) == 0);
	CHECK(recovery.resets == 1 && recovery.timeouts == 0 && recovery.aborts_sent == 0);
	CHECK(recovery.last_reset_micros > 0 && recovery.max_reset_micros >= recovery.last_reset_micros);
	CHECK(isonvme_buffer_free(buffer) == 0);
	isonvme_handle_free(handle);
	CHECK(isonvme_runtime_close(runtime) == 0);
	if (failures == 0)
		printf("all checks passed\n");
	return failures != 0;
}
