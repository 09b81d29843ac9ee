#!/usr/bin/env python3
"""Writes SIZE bytes to PATH with O_DIRECT from one 16 MB buffer in huge pages, as r2rc's
writer does (direct::DeviceBuffer), and prints the seconds the writes took.

A disk that caps the segments of a request (this VM's virtio disk: 254, one per
physically contiguous run of memory) takes requests from 2 MiB pages faster than from
dd's 4 KiB pages: this is the floor r2rc's own writes can reach, beside dd's.
Usage: huge_page_floor.py PATH SIZE
"""

import ctypes
import mmap
import os
import sys
import time


def main():
    path, size = sys.argv[1], int(sys.argv[2])
    chunk, huge = 16 << 20, 2 << 20
    buf = mmap.mmap(-1, chunk + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    # The buffer from the first 2 MiB boundary in the mapping, touched before timing.
    skip = -ctypes.addressof(ctypes.c_char.from_buffer(buf)) % huge
    view = memoryview(buf)[skip:skip + chunk]
    view[:] = b"\1" * chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o644)
    t0 = time.perf_counter()
    at = 0
    while at < size:
        n = -(-min(chunk, size - at) // 4096) * 4096
        os.pwrite(fd, view[:n], at)
        at += n
    os.ftruncate(fd, size)
    os.close(fd)
    print(f"{time.perf_counter() - t0:.4f}")
    view.release()


if __name__ == "__main__":
    main()
