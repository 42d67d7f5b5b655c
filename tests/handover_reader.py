#!/usr/bin/env python3
"""A job reading the store through a daemon handover (tests/handover.rs).

Run in a mount namespace of its own (unshare --mount): bind-mounts the store at BIND, as a job
container does, then reads every file and symlink EXPECTED lists, again and again, until STOP
exists. Each file's page cache is dropped before it is read (posix_fadvise DONTNEED), so every
round asks the daemon. Writes its figures to STATUS (JSON) at least every 0.2 s and at the end:
reads, rounds, failures (wrong bytes or an error), the longest time one read took.

usage: handover_reader.py SRC BIND EXPECTED STATUS STOP
EXPECTED lines: "F<TAB><sha256 hex><TAB><relative path>" or "L<TAB><target><TAB><path>".
"""
import hashlib
import json
import os
import subprocess
import sys
import time

src, bind, expected_path, status_path, stop_path = sys.argv[1:6]
os.makedirs(bind, exist_ok=True)
subprocess.run(["mount", "--bind", src, bind], check=True)
entries = []
with open(expected_path) as f:
    for line in f:
        kind, want, rel = line.rstrip("\n").split("\t", 2)
        entries.append((kind, want, rel))

figures = {"reads": 0, "rounds": 0, "failures": [], "failure_count": 0,
           "max_stall": 0.0, "max_stall_path": "", "done": False}


def report():
    figures["heartbeat"] = time.time()
    tmp = status_path + ".tmp"
    with open(tmp, "w") as out:
        json.dump(figures, out)
    os.rename(tmp, status_path)


def digest(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                return h.hexdigest()
            h.update(block)
    finally:
        os.close(fd)


last = time.monotonic()
report()
while not os.path.exists(stop_path):
    for kind, want, rel in entries:
        path = os.path.join(bind, rel)
        start = time.monotonic()
        try:
            got = os.readlink(path) if kind == "L" else digest(path)
            if got != want:
                figures["failure_count"] += 1
                figures["failures"].append(f"{rel}: wrong bytes")
        except OSError as err:
            figures["failure_count"] += 1
            figures["failures"].append(f"{rel}: {err}")
        del figures["failures"][20:]
        now = time.monotonic()
        figures["reads"] += 1
        if now - start > figures["max_stall"]:
            figures["max_stall"] = now - start
            figures["max_stall_path"] = rel
        if now - last > 0.2:
            report()
            last = now
    figures["rounds"] += 1
figures["done"] = True
report()
