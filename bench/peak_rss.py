"""Runs a command and reports its wall time and the peak resident memory of its whole process tree (the sum over the
process and all its descendants, sampled every 0.1 s from /proc; Linux only). `/usr/bin/time -v` reports only the
largest single process, which undercounts a pipeline of worker processes such as datasets.map(num_proc=2).

    python3 bench/peak_rss.py -- target/release/rustspeed prepare --input ... --out ...
"""

import os
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
        pending.extend(children.get(pid, []))
    return total


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    start = time.time()
    process = subprocess.Popen(argv)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.1)
    seconds = time.time() - start
    print(f"peak_rss: {peak / 2**20:.0f} MiB over the process tree, wall {seconds:.1f}s, exit {process.returncode}",
          file=sys.stderr)
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
