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
 * jobs of a device share one isonvme runtime, and each job thread takes
 * the per-CPU handle of the CPU fio pinned it to (cpus_allowed=).
 *
 * Zero copy: each io_u's buffer is a DMA buffer of the driver (swapped in
 * when the job opens its file), so reads land and writes leave straight
 * from the memory fio fills and verifies.
 *
 * Built by capi/fio/build.sh against the fio headers of the fio installed
 * (Debian's fio 3.33 and its source package).
 */
#include <errno.h>
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

/* One runtime per device string, shared by the jobs that use it. */
#define MAX_CPUS 4096

struct device {
	char *name;
	isonvme_runtime *runtime;
	/* Handles of jobs that ended, by CPU: a CPU's handle is handed out
	 * once per runtime, so later jobs (stonewall) take it from here. */
	isonvme_handle *idle[MAX_CPUS];
	uint64_t blocks;
	uint32_t block_size;
	int users;
	struct device *next;
};

static pthread_mutex_t devices_lock = PTHREAD_MUTEX_INITIALIZER;
static struct device *devices;

/* Per job thread. */
struct job {
	struct device *device;
	isonvme_handle *handle;
	struct io_u **events;
	isonvme_completion *completions;
	unsigned int depth;
	int swapped;
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

static struct device *device_get(struct thread_data *td, const char *file_name)
{
	struct isonvme_fio_options *o = td->eo;
	char *name = device_name(file_name);
	struct device *dev;
	int code;

	pthread_mutex_lock(&devices_lock);
	for (dev = devices; dev; dev = dev->next)
		if (!strcmp(dev->name, name))
			break;
	if (dev) {
		dev->users++;
		free(name);
		pthread_mutex_unlock(&devices_lock);
		return dev;
	}
	dev = calloc(1, sizeof(*dev));
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
	/* Room for every job's queue depth on a CPU (bs above MDTS splits). */
	opts.depth = td->o.iodepth * 8 + 1;
	code = isonvme_runtime_open(controller, &opts, &dev->runtime);
	if (code < 0) {
		error_out(td, "starting the isonvme runtime", code);
		goto fail;
	}
	dev->name = name;
	dev->users = 1;
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

static void device_put(struct device *dev)
{
	pthread_mutex_lock(&devices_lock);
	if (--dev->users == 0) {
		struct device **link = &devices;
		while (*link != dev)
			link = &(*link)->next;
		*link = dev->next;
		for (int cpu = 0; cpu < MAX_CPUS; cpu++)
			isonvme_handle_free(dev->idle[cpu]);
		int code = isonvme_runtime_close(dev->runtime);
		if (code < 0)
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
		device_put(dev);
	}
	return 0;
}

/* Takes CPU `cpu`'s handle (an idle one, or the runtime's). */
static int take_handle(struct device *dev, int cpu, isonvme_handle **out)
{
	if (cpu < 0 || cpu >= MAX_CPUS)
		return ISONVME_ERROR_INVALID_ARGUMENT;
	if (dev->idle[cpu]) {
		*out = dev->idle[cpu];
		dev->idle[cpu] = NULL;
		return 0;
	}
	return isonvme_runtime_handle(dev->runtime, (uint32_t)cpu, out);
}

static int fio_isonvme_init(struct thread_data *td)
{
	struct job *job = calloc(1, sizeof(*job));
	cpu_set_t allowed;
	int cpu = sched_getcpu();
	int code;

	if (!job)
		return 1;
	td->io_ops_data = job;
	job->device = device_get(td, td->files[0]->file_name);
	if (!job->device)
		return 1;
	pthread_mutex_lock(&devices_lock);
	if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_COUNT(&allowed) > 1) {
		/* Not pinned (no cpus_allowed=): the first CPU it may use whose
		 * handle is free, and pinned there, as isonvme-bench places its
		 * job threads; one job thread per CPU at a time. */
		code = ISONVME_ERROR_INVALID_ARGUMENT;
		for (int c = 0; c < MAX_CPUS && c < CPU_SETSIZE; c++) {
			if (!CPU_ISSET(c, &allowed))
				continue;
			if (take_handle(job->device, c, &job->handle) == 0) {
				cpu_set_t one;
				CPU_ZERO(&one);
				CPU_SET(c, &one);
				sched_setaffinity(0, sizeof(one), &one);
				cpu = c;
				code = 0;
				break;
			}
		}
	} else {
		code = take_handle(job->device, cpu, &job->handle);
	}
	pthread_mutex_unlock(&devices_lock);
	if (code < 0) {
		log_err("isonvme: job %s: no free CPU handle (CPU %d: %s): each job thread needs a CPU of its own at a time; run fewer jobs at once or give them other CPUs (cpus_allowed=, cpus_allowed_policy=split)\n",
			td->o.name, cpu, isonvme_last_error());
		return 1;
	}
	job->depth = td->o.iodepth;
	job->events = calloc(job->depth, sizeof(*job->events));
	job->completions = calloc(job->depth, sizeof(*job->completions));
	return !job->events || !job->completions;
}

static int fio_isonvme_io_u_init(struct thread_data *td, struct io_u *io_u)
{
	struct job *job = td->io_ops_data;
	isonvme_buffer *buffer = NULL;
	int code = isonvme_buffer_alloc(job->device->runtime, td_max_bs(td), &buffer);

	if (code < 0) {
		error_out(td, "allocating a DMA buffer", code);
		return 1;
	}
	io_u->engine_data = buffer;
	return 0;
}

static void fio_isonvme_io_u_free(struct thread_data *td, struct io_u *io_u)
{
	isonvme_buffer_free(io_u->engine_data);
	io_u->engine_data = NULL;
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
		void *dma = isonvme_buffer_data(io_u->engine_data);
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
	uint32_t block_size = job->device->block_size;
	uint64_t lba = io_u->offset / block_size;
	uint32_t blocks = io_u->xfer_buflen / block_size;
	isonvme_buffer *buffer = io_u->engine_data;
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
	switch (io_u->ddir) {
	case DDIR_READ:
		code = isonvme_submit_read(job->handle, 1, lba, blocks, buffer, tag);
		break;
	case DDIR_WRITE:
		code = isonvme_submit_write(job->handle, 1, lba, blocks, buffer, tag);
		break;
	case DDIR_SYNC:
	case DDIR_DATASYNC:
		code = isonvme_submit_flush(job->handle, 1, tag);
		break;
	case DDIR_TRIM:
		code = isonvme_submit_write_zeroes(job->handle, 1, lba, blocks, true, tag);
		break;
	default:
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	if (code == ISONVME_ERROR_QUEUE_FULL)
		return FIO_Q_BUSY;
	if (code < 0) {
		log_err("isonvme: submitting: %s\n", isonvme_last_error());
		io_u->error = code == ISONVME_ERROR_DEVICE_REMOVED ? ENODEV : EINVAL;
		return FIO_Q_COMPLETED;
	}
	return FIO_Q_QUEUED;
}

static int fio_isonvme_commit(struct thread_data *td)
{
	struct job *job = td->io_ops_data;
	isonvme_ring(job->handle);
	return 0;
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
		int n = isonvme_poll(job->handle, job->completions, max - got);
		if (n < 0) {
			log_err("isonvme: polling: %s\n", isonvme_last_error());
			return n == ISONVME_ERROR_DEVICE_REMOVED ? -ENODEV : -EIO;
		}
		for (int i = 0; i < n; i++) {
			struct io_u *io_u = (struct io_u *)(uintptr_t)job->completions[i].tag;
			io_u->error = job->completions[i].status ? EIO : 0;
			if (job->completions[i].status) {
				char text[128];
				isonvme_status_string(job->completions[i].status, text, sizeof text);
				log_err("isonvme: %s at offset %llu: %s\n",
					io_ddir_name(io_u->ddir), io_u->offset, text);
			}
			io_u->resid = 0;
			job->events[got++] = io_u;
		}
		if (got >= min || got == max)
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
	if (job->handle) {
		int cpu = (int)isonvme_handle_cpu(job->handle);
		pthread_mutex_lock(&devices_lock);
		if (cpu >= 0 && cpu < MAX_CPUS && !job->device->idle[cpu]) {
			job->device->idle[cpu] = job->handle;
			job->handle = NULL;
		}
		pthread_mutex_unlock(&devices_lock);
		isonvme_handle_free(job->handle);
	}
	if (job->device)
		device_put(job->device);
	free(job->events);
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
