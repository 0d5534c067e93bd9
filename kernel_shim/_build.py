"""cffi build script (API mode) for kernel_shim._kernel_shim. Placeholder until the shim lands."""

from cffi import FFI

ffi = FFI()
ffi.cdef("int sethostname(const char *name, size_t len);")
ffi.set_source("kernel_shim._kernel_shim", "#include <unistd.h>")

if __name__ == "__main__":
    ffi.compile(verbose=True)
