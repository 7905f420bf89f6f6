/*
 * fio ioengine for isonvme, on top of its C API (libisonvme).
 *
 *   fio --thread --ioengine=external:/path/libisonvme_fio.so \
 *       --filename=sim,size=1G --rw=randread --bs=4k --iodepth=32 ...
 *
 * filename= is an isonvme device: "sim[,key=value...]" or a PCI address
 * written with dots (0000.01.00.0: fio splits file names at ':').
 * Engine options: completion=interrupt|poll|hybrid, inline_cpus=,
 * isolated=, command_timeout= (ms). fio's thread mode is required: the
 * jobs of a device share one isonvme runtime, open until fio exits, and
 * each job thread uses the per-CPU handle of the CPU fio pinned it to
 * (cpus_allowed=); a job thread fio did not pin is pinned to the CPU with
 * the fewest job threads. Job threads on one CPU take turns with its
 * handle (a mutex, uncontended with one thread per CPU).
 *
 * Zero copy: each io_u's buffer is a DMA buffer of the driver (swapped in
 * when the job opens its file), so reads land and writes leave straight
 * from the memory fio fills and verifies.
 *
 * Built by capi/fio/build.sh against the fio headers of the fio installed
 * (Debian's fio 3.33 and its source package).
 */
#include <errno.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdatomic.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fio.h"
#include "optgroup.h"

#include "isonvme.h"

struct isonvme_fio_options {
	void *pad; /* fio keeps the thread_data pointer here */
	char *completion;
	char *inline_cpus;
	char *isolated;
	unsigned int command_timeout;
};

static struct fio_option options[] = {
	{
		.name = "completion",
		.lname = "isonvme completion mode",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct isonvme_fio_options, completion),
		.help = "How completion threads wait: interrupt, poll or hybrid",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "inline_cpus",
		.lname = "isonvme inline CPUs",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct isonvme_fio_options, inline_cpus),
		.help = "CPUs that reap their own interrupt-less queue: none, isolated, all or a list",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "isolated",
		.lname = "isonvme isolated CPUs",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct isonvme_fio_options, isolated),
		.help = "The isolated CPUs (default: this host's isolcpus=/nohz_full=)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "command_timeout",
		.lname = "isonvme command timeout",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct isonvme_fio_options, command_timeout),
		.help = "Milliseconds a command may take before it is aborted (default 30000)",
		.def = "30000",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = NULL,
	},
};

/* One runtime per device string, shared by the jobs that use it and kept
 * open until fio exits: a later job group (stonewall) sees what an
 * earlier one wrote, also on the simulator, whose media lives in the
 * runtime. */
#define MAX_CPUS 4096

/* A CPU's handle and the job threads on that CPU. The handle belongs to
 * one CPU; when fio runs more job threads than there are CPUs for them,
 * the threads on a CPU take turns with it under `lock` and each keeps its
 * own completions.
 *
 * A CPU's only job thread uses the handle without the lock: one thread
 * per CPU is the case that is measured, and a mutex on every submit and
 * poll cost 3% of QD32 IOPS on the simulator. That thread marks each call
 * in `owner_in_call` (plain stores and a compiler fence) and checks
 * `shared`. A job thread that joins sets `shared`, runs membarrier(2)
 * (every thread of the process passes a full barrier: the asymmetric
 * Dekker pattern of userspace RCU), then waits for `owner_in_call` to
 * drop: either the owner's check saw `shared` and it locks from then on,
 * or the joiner sees the call in progress and waits for its end. The wait
 * is for one engine call, never for the owner's next one (which may not
 * come while fio's own locks, e.g. zbd's zone locks, hold it). Without
 * membarrier every job thread locks. */
struct cpu_queue {
	pthread_mutex_t lock;
	isonvme_handle *handle;
	/* Job threads on this CPU now (devices_lock). */
	int users;
	/* Ever had two job threads at once: everyone locks (never cleared). */
	atomic_int shared;
	/* The thread using it without the lock is inside an engine call. */
	atomic_int owner_in_call;
};

/* membarrier(2) registered: a CPU's only job thread may go without the
 * lock. */
static int lock_free_owner;

static void register_membarrier(void)
{
	lock_free_owner = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

struct device {
	char *name;
	isonvme_runtime *runtime;
	struct cpu_queue *cpus[MAX_CPUS];
	uint64_t blocks;
	uint32_t block_size;
	struct device *next;
};

static pthread_mutex_t devices_lock = PTHREAD_MUTEX_INITIALIZER;
static struct device *devices;

/* Per job thread. */
struct job {
	struct device *device;
	struct cpu_queue *queue;
	/* Takes queue->lock around every use of the handle. */
	int locked;
	/* Handed to fio by getevents(), read back by event(). */
	struct io_u **events;
	/* This job's completions reaped by another job thread on its CPU,
	 * waiting for its next getevents() (a ring of `depth`). */
	struct io_u **ready;
	unsigned int ready_head, ready_count;
	isonvme_completion *completions;
	unsigned int depth;
	/* Submitted and not yet handed to fio. */
	unsigned int outstanding;
	int swapped;
};

/* What an io_u carries: its DMA buffer and the job that submitted it
 * (with io_submit_mode=offload, a worker of the job's), so a completion
 * reaped by any job thread on the CPU finds its way back. */
struct io_u_data {
	isonvme_buffer *buffer;
	struct job *job;
};

static void error_out(struct thread_data *td, const char *what, int code)
{
	log_err("isonvme: %s: %s (%s)\n", what, isonvme_last_error(), isonvme_strerror(code));
	td_verror(td, EINVAL, what);
}

/* "0000.01.00.0" -> "0000:01:00.0"; anything else as given. */
static char *device_name(const char *file_name)
{
	char *name = strdup(file_name);
	unsigned a, b, c, d;
	char tail;
	if (name && sscanf(file_name, "%4x.%2x.%2x.%1x%c", &a, &b, &c, &d, &tail) == 4)
		snprintf(name, strlen(file_name) + 1, "%04x:%02x:%02x.%x", a, b, c, d);
	return name;
}

/* Slots per CPU: every job of the run may end up on one CPU, each with
 * its iodepth, and a block size above the controller's MDTS takes up to
 * 8 slots per I/O (the driver clamps this to the queue size). */
static uint32_t runtime_depth(void)
{
	struct thread_data *td;
	uint64_t depth = 1;
	int i;

	for_each_td(td, i) {
		depth += (uint64_t)td->o.iodepth * 8;
	}
	return depth > 65536 ? 65536 : (uint32_t)depth;
}

static struct device *device_get(struct thread_data *td, const char *file_name)
{
	struct isonvme_fio_options *o = td->eo;
	char *name = device_name(file_name);
	struct device *dev;
	int code;

	static pthread_once_t membarrier_once = PTHREAD_ONCE_INIT;
	pthread_once(&membarrier_once, register_membarrier);
	pthread_mutex_lock(&devices_lock);
	for (dev = devices; dev; dev = dev->next)
		if (!strcmp(dev->name, name))
			break;
	if (dev) {
		free(name);
		pthread_mutex_unlock(&devices_lock);
		return dev;
	}
	dev = calloc(1, sizeof(*dev));
	if (!dev) {
		td_verror(td, ENOMEM, "isonvme device");
		goto fail;
	}
	isonvme_controller *controller = NULL;
	code = isonvme_controller_open(name, NULL, &controller);
	if (code < 0) {
		error_out(td, "opening the device", code);
		goto fail;
	}
	code = isonvme_controller_namespace(controller, 1, &dev->blocks, &dev->block_size);
	if (code < 0) {
		isonvme_controller_close(controller);
		error_out(td, "namespace 1", code);
		goto fail;
	}
	isonvme_runtime_options opts;
	isonvme_runtime_options_default(&opts);
	if (o->completion) {
		if (!strcmp(o->completion, "poll"))
			opts.completion = ISONVME_COMPLETION_MODE_POLL;
		else if (!strcmp(o->completion, "hybrid"))
			opts.completion = ISONVME_COMPLETION_MODE_HYBRID;
		else if (strcmp(o->completion, "interrupt")) {
			log_err("isonvme: completion=%s: use interrupt, poll or hybrid\n", o->completion);
			td_verror(td, EINVAL, "completion=");
			isonvme_controller_close(controller);
			goto fail;
		}
	}
	opts.isolated = o->isolated;
	opts.inline_cpus = o->inline_cpus;
	if (o->command_timeout)
		opts.command_timeout_ms = o->command_timeout;
	opts.depth = runtime_depth();
	code = isonvme_runtime_open(controller, &opts, &dev->runtime);
	if (code < 0) {
		error_out(td, "starting the isonvme runtime", code);
		goto fail;
	}
	dev->name = name;
	dev->next = devices;
	devices = dev;
	pthread_mutex_unlock(&devices_lock);
	return dev;
fail:
	pthread_mutex_unlock(&devices_lock);
	free(name);
	free(dev);
	return NULL;
}

/* When fio exits (or unloads the engine): the handles go back and each
 * runtime stops, which also brings a real controller down cleanly. */
__attribute__((destructor)) static void devices_close(void)
{
	pthread_mutex_lock(&devices_lock);
	while (devices) {
		struct device *dev = devices;
		devices = dev->next;
		for (int cpu = 0; cpu < MAX_CPUS; cpu++) {
			if (!dev->cpus[cpu])
				continue;
			isonvme_handle_free(dev->cpus[cpu]->handle);
			pthread_mutex_destroy(&dev->cpus[cpu]->lock);
			free(dev->cpus[cpu]);
		}
		if (isonvme_runtime_close(dev->runtime) < 0)
			log_err("isonvme: closing %s: %s\n", dev->name, isonvme_last_error());
		free(dev->name);
		free(dev);
	}
	pthread_mutex_unlock(&devices_lock);
}

static int fio_isonvme_setup(struct thread_data *td)
{
	struct fio_file *f;
	unsigned int i;

	if (!td->o.use_thread) {
		log_err("isonvme: run fio with --thread (thread=1): job threads share the device's runtime\n");
		return 1;
	}
	if (td->o.io_submit_mode == IO_MODE_OFFLOAD) {
		/* Offload hands each io_u to a pool of fio worker threads: the
		 * submitting thread would not be the job's CPU's thread. */
		log_err("isonvme: io_submit_mode=offload is not supported: isonvme submits from the job thread's own CPU queue; use io_submit_mode=inline (the default) with rate_iops=\n");
		return 1;
	}
	if (td->o.nr_files != 1) {
		log_err("isonvme: one device per job (filename=), not %u\n", td->o.nr_files);
		return 1;
	}
	for_each_file(td, f, i) {
		struct device *dev = device_get(td, f->file_name);
		if (!dev)
			return 1;
		f->real_file_size = dev->blocks * dev->block_size;
		fio_file_set_size_known(f);
	}
	return 0;
}

/* CPU `cpu`'s queue, its handle taken from the runtime the first time.
 * Called with devices_lock held. */
static struct cpu_queue *cpu_queue(struct device *dev, int cpu)
{
	struct cpu_queue *queue;
	int code;

	if (cpu < 0 || cpu >= MAX_CPUS) {
		log_err("isonvme: CPU %d is beyond the engine's %d\n", cpu, MAX_CPUS);
		return NULL;
	}
	if (dev->cpus[cpu])
		return dev->cpus[cpu];
	queue = calloc(1, sizeof(*queue));
	if (!queue)
		return NULL;
	code = isonvme_runtime_handle(dev->runtime, (uint32_t)cpu, &queue->handle);
	if (code < 0) {
		log_err("isonvme: the handle of CPU %d: %s\n", cpu, isonvme_last_error());
		free(queue);
		return NULL;
	}
	pthread_mutex_init(&queue->lock, NULL);
	dev->cpus[cpu] = queue;
	return queue;
}

static int fio_isonvme_init(struct thread_data *td)
{
	struct job *job = calloc(1, sizeof(*job));
	cpu_set_t allowed;
	int cpu = sched_getcpu();
	int wait_for_owner = 0;

	if (!job)
		return 1;
	td->io_ops_data = job;
	job->device = device_get(td, td->files[0]->file_name);
	if (!job->device)
		return 1;
	pthread_mutex_lock(&devices_lock);
	if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_COUNT(&allowed) > 1) {
		/* Not pinned (no cpus_allowed=): the CPU it may use with the
		 * fewest job threads, the first such one, and pinned there, as
		 * isonvme-bench places its job threads. */
		int best = -1, best_users = 0;
		for (int c = 0; c < MAX_CPUS && c < CPU_SETSIZE; c++) {
			if (!CPU_ISSET(c, &allowed))
				continue;
			int users = job->device->cpus[c] ? job->device->cpus[c]->users : 0;
			if (best < 0 || users < best_users) {
				best = c;
				best_users = users;
			}
		}
		if (best >= 0) {
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(best, &one);
			sched_setaffinity(0, sizeof(one), &one);
			cpu = best;
		}
	}
	job->queue = cpu_queue(job->device, cpu);
	if (job->queue) {
		struct cpu_queue *queue = job->queue;
		/* Alone on the CPU, it goes without the lock until someone
		 * joins; a joiner locks, and waits out the call a lock-free
		 * owner may be in. */
		if (queue->users > 0 || atomic_load(&queue->shared) || !lock_free_owner) {
			atomic_store(&queue->shared, 1);
			job->locked = 1;
			wait_for_owner = lock_free_owner;
		}
		if (queue->users++ == 1)
			log_info("isonvme: job %s shares CPU %d's queue with another job thread (more job threads than CPUs for them: their latencies include waiting for each other)\n",
				 td->o.name, cpu);
	}
	pthread_mutex_unlock(&devices_lock);
	if (!job->queue) {
		log_err("isonvme: job %s: no queue for CPU %d\n", td->o.name, cpu);
		return 1;
	}
	if (wait_for_owner) {
		/* `shared` is visible to the owner's next check, or its call in
		 * progress is visible here: wait for that call to end (the
		 * owner runs on this CPU, so sleep to let it). */
		syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
		while (atomic_load_explicit(&job->queue->owner_in_call, memory_order_acquire))
			usleep(10);
	}
	job->depth = td->o.iodepth;
	job->events = calloc(job->depth, sizeof(*job->events));
	job->ready = calloc(job->depth, sizeof(*job->ready));
	job->completions = calloc(job->depth, sizeof(*job->completions));
	return !job->events || !job->ready || !job->completions;
}

/* Before using the CPU's handle. */
static void queue_enter(struct job *job)
{
	struct cpu_queue *queue = job->queue;

	if (!job->locked) {
		atomic_store_explicit(&queue->owner_in_call, 1, memory_order_relaxed);
		/* Orders the store before the load against a joiner's
		 * membarrier(); costs nothing at run time. */
		atomic_signal_fence(memory_order_seq_cst);
		if (!atomic_load_explicit(&queue->shared, memory_order_relaxed))
			return;
		/* Someone joined: lock from now on. */
		atomic_store_explicit(&queue->owner_in_call, 0, memory_order_release);
		job->locked = 1;
	}
	pthread_mutex_lock(&queue->lock);
}

/* After using it. */
static void queue_leave(struct job *job)
{
	if (job->locked)
		pthread_mutex_unlock(&job->queue->lock);
	else
		/* Release: what this call did happens before a joiner's use. */
		atomic_store_explicit(&job->queue->owner_in_call, 0, memory_order_release);
}

static int fio_isonvme_io_u_init(struct thread_data *td, struct io_u *io_u)
{
	struct job *job = td->io_ops_data;
	struct io_u_data *data = calloc(1, sizeof(*data));
	int code;

	if (!data) {
		td_verror(td, ENOMEM, "io_u data");
		return 1;
	}
	code = isonvme_buffer_alloc(job->device->runtime, td_max_bs(td), &data->buffer);
	if (code < 0) {
		free(data);
		error_out(td, "allocating a DMA buffer", code);
		return 1;
	}
	io_u->engine_data = data;
	return 0;
}

static void fio_isonvme_io_u_free(struct thread_data *td, struct io_u *io_u)
{
	struct io_u_data *data = io_u->engine_data;

	if (data) {
		isonvme_buffer_free(data->buffer);
		free(data);
	}
	io_u->engine_data = NULL;
}

static isonvme_buffer *buffer_of(struct io_u *io_u)
{
	return ((struct io_u_data *)io_u->engine_data)->buffer;
}

/* The io_us' memory becomes the DMA buffers (once, as fio set io_u->buf
 * after io_u_init), keeping what fio put there. */
static int fio_isonvme_open_file(struct thread_data *td, struct fio_file *f)
{
	struct job *job = td->io_ops_data;
	struct io_u *io_u;
	unsigned int i;

	if (job->swapped)
		return 0;
	io_u_qiter(&td->io_u_all, io_u, i) {
		void *dma = isonvme_buffer_data(buffer_of(io_u));
		if (!dma)
			return 1;
		if (io_u->buf)
			memcpy(dma, io_u->buf, td_max_bs(td));
		io_u->buf = dma;
	}
	job->swapped = 1;
	return 0;
}

static int fio_isonvme_close_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static enum fio_q_status fio_isonvme_queue(struct thread_data *td, struct io_u *io_u)
{
	struct job *job = td->io_ops_data;
	isonvme_handle *handle = job->queue->handle;
	uint32_t block_size = job->device->block_size;
	uint64_t lba = io_u->offset / block_size;
	uint32_t blocks = io_u->xfer_buflen / block_size;
	isonvme_buffer *buffer = buffer_of(io_u);
	uint64_t tag = (uint64_t)(uintptr_t)io_u;
	int code;

	fio_ro_check(td, io_u);
	if (io_u->xfer_buf != isonvme_buffer_data(buffer)) {
		/* Only the start of an io_u's buffer is a DMA address here. */
		log_err("isonvme: an I/O buffer that is not the io_u's own (offset %llu)\n",
			io_u->offset);
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	((struct io_u_data *)io_u->engine_data)->job = job;
	queue_enter(job);
	switch (io_u->ddir) {
	case DDIR_READ:
		code = isonvme_submit_read(handle, 1, lba, blocks, buffer, tag);
		break;
	case DDIR_WRITE:
		code = isonvme_submit_write(handle, 1, lba, blocks, buffer, tag);
		break;
	case DDIR_SYNC:
	case DDIR_DATASYNC:
		code = isonvme_submit_flush(handle, 1, tag);
		break;
	case DDIR_TRIM:
		code = isonvme_submit_write_zeroes(handle, 1, lba, blocks, true, tag);
		break;
	default:
		code = ISONVME_ERROR_INVALID_ARGUMENT;
		break;
	}
	queue_leave(job);
	if (code == ISONVME_ERROR_QUEUE_FULL)
		return FIO_Q_BUSY;
	if (code < 0) {
		log_err("isonvme: submitting %s at offset %llu: %s\n", io_ddir_name(io_u->ddir),
			io_u->offset, isonvme_last_error());
		io_u->error = code == ISONVME_ERROR_DEVICE_REMOVED ? ENODEV : EINVAL;
		return FIO_Q_COMPLETED;
	}
	job->outstanding++;
	return FIO_Q_QUEUED;
}

static int fio_isonvme_commit(struct thread_data *td)
{
	struct job *job = td->io_ops_data;

	queue_enter(job);
	isonvme_ring(job->queue->handle);
	queue_leave(job);
	return 0;
}

/* Fills in an io_u's outcome from its completion. */
static struct io_u *finished(const isonvme_completion *completion)
{
	struct io_u *io_u = (struct io_u *)(uintptr_t)completion->tag;

	io_u->error = completion->status ? EIO : 0;
	if (completion->status) {
		char text[128];
		isonvme_status_string(completion->status, text, sizeof text);
		log_err("isonvme: %s at offset %llu: %s\n", io_ddir_name(io_u->ddir),
			io_u->offset, text);
	}
	io_u->resid = 0;
	return io_u;
}

/* Polls the CPU's queue once (entered): this job's completions go
 * to `events` from `got` on, other job threads' to their ready rings.
 * Returns the new count or a negative errno. */
static int reap(struct job *job, unsigned int got, unsigned int max)
{
	struct io_u *io_u;

	while (job->ready_count && got < max) {
		job->events[got++] = job->ready[job->ready_head];
		job->ready_head = (job->ready_head + 1) % job->depth;
		job->ready_count--;
	}
	if (got == max)
		return got;
	int n = isonvme_poll(job->queue->handle, job->completions, max - got);
	if (n < 0) {
		log_err("isonvme: polling: %s\n", isonvme_last_error());
		return n == ISONVME_ERROR_DEVICE_REMOVED ? -ENODEV : -EIO;
	}
	for (int i = 0; i < n; i++) {
		io_u = finished(&job->completions[i]);
		struct job *owner = ((struct io_u_data *)io_u->engine_data)->job;
		if (owner == job) {
			job->events[got++] = io_u;
		} else {
			/* Never full: its io_us in flight are at most its depth. */
			owner->ready[(owner->ready_head + owner->ready_count) % owner->depth] = io_u;
			owner->ready_count++;
		}
	}
	return got;
}

static int fio_isonvme_getevents(struct thread_data *td, unsigned int min, unsigned int max,
				 const struct timespec *t)
{
	struct job *job = td->io_ops_data;
	unsigned int got = 0;
	uint64_t deadline_ns = 0;
	struct timespec now;

	if (t) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		deadline_ns = (uint64_t)now.tv_sec * 1000000000ull + now.tv_nsec +
			      (uint64_t)t->tv_sec * 1000000000ull + t->tv_nsec;
	}
	if (max > job->depth)
		max = job->depth;
	for (;;) {
		queue_enter(job);
		int n = reap(job, got, max);
		queue_leave(job);
		if (n < 0)
			return n;
		job->outstanding -= (unsigned int)n - got;
		got = (unsigned int)n;
		/* Nothing of its own left in flight: waiting for more could
		 * only wait for other job threads' commands. */
		if (got >= min || got == max || job->outstanding == 0)
			return got;
		if (t) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if ((uint64_t)now.tv_sec * 1000000000ull + now.tv_nsec >= deadline_ns)
				return got;
		}
	}
}

static struct io_u *fio_isonvme_event(struct thread_data *td, int event)
{
	struct job *job = td->io_ops_data;
	return job->events[event];
}

static void fio_isonvme_cleanup(struct thread_data *td)
{
	struct job *job = td->io_ops_data;

	if (!job)
		return;
	if (job->queue) {
		/* The handle stays with its CPU for the jobs that come later
		 * (stonewall) until fio exits. */
		pthread_mutex_lock(&devices_lock);
		job->queue->users--;
		pthread_mutex_unlock(&devices_lock);
	}
	free(job->events);
	free(job->ready);
	free(job->completions);
	free(job);
	td->io_ops_data = NULL;
}

struct ioengine_ops ioengine = {
	.name = "isonvme",
	.version = FIO_IOOPS_VERSION,
	.flags = FIO_RAWIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_MEMALIGN | FIO_DISKLESSIO,
	.setup = fio_isonvme_setup,
	.init = fio_isonvme_init,
	.io_u_init = fio_isonvme_io_u_init,
	.io_u_free = fio_isonvme_io_u_free,
	.open_file = fio_isonvme_open_file,
	.close_file = fio_isonvme_close_file,
	.queue = fio_isonvme_queue,
	.commit = fio_isonvme_commit,
	.getevents = fio_isonvme_getevents,
	.event = fio_isonvme_event,
	.cleanup = fio_isonvme_cleanup,
	.options = options,
	.option_struct_size = sizeof(struct isonvme_fio_options),
};
