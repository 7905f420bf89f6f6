// A small RAII wrapper over isonvme's C API (exceptions for errors,
// unique_ptr for ownership), and a program that writes 32 blocks at queue
// depth 8, reads them back and checks them.
//
//   c++ -std=c++17 -O2 -Icapi/include capi/examples/raii.cpp -Ltarget/release -lisonvme -o raii
//   ./raii [device] [cpu]
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "isonvme.h"

namespace isonvme {

// Every failure of the C API, with the calling thread's message.
struct Error : std::runtime_error {
	int code;
	Error(const std::string &what, int code)
	    : std::runtime_error(what + ": " + isonvme_last_error()), code(code) {}
};

inline void check(int code, const char *what)
{
	if (code < 0)
		throw Error(what, code);
}

struct BufferFree {
	void operator()(isonvme_buffer *b) const { isonvme_buffer_free(b); }
};
struct HandleFree {
	void operator()(isonvme_handle *h) const { isonvme_handle_free(h); }
};
struct RuntimeClose {
	void operator()(isonvme_runtime *r) const { isonvme_runtime_close(r); }
};

class Buffer {
public:
	explicit Buffer(isonvme_buffer *raw) : raw_(raw) {}
	uint8_t *data() { return static_cast<uint8_t *>(isonvme_buffer_data(raw_.get())); }
	size_t size() const { return isonvme_buffer_len(raw_.get()); }
	isonvme_buffer *get() { return raw_.get(); }

private:
	std::unique_ptr<isonvme_buffer, BufferFree> raw_;
};

// One CPU's queue; move-only, used from one thread.
class Handle {
public:
	explicit Handle(isonvme_handle *raw) : raw_(raw) {}
	void read(uint32_t nsid, uint64_t lba, uint32_t blocks, Buffer &b, uint64_t tag)
	{
		check(isonvme_submit_read(raw_.get(), nsid, lba, blocks, b.get(), tag), "submit read");
	}
	void write(uint32_t nsid, uint64_t lba, uint32_t blocks, Buffer &b, uint64_t tag)
	{
		check(isonvme_submit_write(raw_.get(), nsid, lba, blocks, b.get(), tag), "submit write");
	}
	void ring() { isonvme_ring(raw_.get()); }
	// Waits for every command in flight; returns their completions.
	std::vector<isonvme_completion> drain()
	{
		std::vector<isonvme_completion> all;
		isonvme_completion batch[16];
		while (isonvme_handle_outstanding(raw_.get()) > 0) {
			int n = isonvme_poll(raw_.get(), batch, 16);
			check(n, "poll");
			all.insert(all.end(), batch, batch + n);
		}
		return all;
	}

private:
	std::unique_ptr<isonvme_handle, HandleFree> raw_;
};

class Runtime {
public:
	Runtime(const std::string &device, const std::string &isolated)
	{
		isonvme_controller *controller = nullptr;
		check(isonvme_controller_open(device.c_str(), nullptr, &controller), "open");
		isonvme_runtime_options options;
		isonvme_runtime_options_default(&options);
		options.isolated = isolated.c_str();
		isonvme_runtime *raw = nullptr;
		check(isonvme_runtime_open(controller, &options, &raw), "runtime");
		raw_.reset(raw);
	}
	Handle handle(uint32_t cpu)
	{
		isonvme_handle *raw = nullptr;
		check(isonvme_runtime_handle(raw_.get(), cpu, &raw), "handle");
		return Handle(raw);
	}
	Buffer buffer(size_t len)
	{
		isonvme_buffer *raw = nullptr;
		check(isonvme_buffer_alloc(raw_.get(), len, &raw), "buffer");
		return Buffer(raw);
	}

private:
	std::unique_ptr<isonvme_runtime, RuntimeClose> raw_;
};

} // namespace isonvme

int main(int argc, char **argv)
{
	std::string device = argc > 1 ? argv[1] : "sim,size=16M";
	uint32_t cpu = argc > 2 ? std::stoul(argv[2]) : 1;
	try {
		isonvme::Runtime runtime(device, std::to_string(cpu));
		// Declared after the runtime: destroyed before it.
		isonvme::Handle handle = runtime.handle(cpu);
		std::vector<isonvme::Buffer> buffers;
		for (int i = 0; i < 8; i++)
			buffers.push_back(runtime.buffer(4096));
		for (uint64_t round = 0; round < 4; round++) {
			for (uint64_t i = 0; i < 8; i++) {
				uint64_t block = round * 8 + i;
				std::memset(buffers[i].data(), static_cast<int>(block + 1), 4096);
				handle.write(1, block, 1, buffers[i], block);
			}
			handle.ring();
			for (const auto &c : handle.drain())
				if (c.status != 0)
					throw std::runtime_error("a write failed, tag " + std::to_string(c.tag));
		}
		for (uint64_t block = 0; block < 32; block++) {
			handle.read(1, block, 1, buffers[0], block);
			handle.ring();
			auto done = handle.drain();
			if (done.size() != 1 || done[0].status != 0 || done[0].tag != block)
				throw std::runtime_error("a read failed, block " + std::to_string(block));
			for (size_t byte = 0; byte < 4096; byte++)
				if (buffers[0].data()[byte] != static_cast<uint8_t>(block + 1))
					throw std::runtime_error("block " + std::to_string(block) + " reads back wrong");
		}
		std::cout << "32 blocks written at queue depth 8, read back and verified through the C++ wrapper"
			  << std::endl;
	} catch (const std::exception &error) {
		std::cerr << "raii: " << error.what() << std::endl;
		return 1;
	}
	return 0;
}
