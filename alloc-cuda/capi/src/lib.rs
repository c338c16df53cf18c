//! The C ABI of alloc-cuda as a shared library (work in progress).
