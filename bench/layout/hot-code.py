"""Turns the traces of bench/layout/train into host/link/hot-code.txt.

Inputs: FUNCTIONS (`address name` of every function of the traced binary; the tracer
patched their distinct addresses in ascending order, and a trace record is an index into
that order) and the directory of traces (`<workload>.<pid>`, little-endian u32 indices in
first-use order).
Output, on stdout: the symbol names of every function any workload executed, workloads in
name order, each function at its first use, without LLVM's `.llvm.<digits>` suffix (it
changes with any edit of the code unit). The legacy mangling's hash stays: it is stable for
a given build configuration and tells apart the instantiations of one generic function;
host/link/order-by-use falls back to the name without it when a build's hash differs.
"""

import argparse
import collections
import re
import struct
from pathlib import Path

LLVM_SUFFIX = re.compile(r"\.llvm\.[0-9]+$")


def stable_name(symbol: str) -> str:
    return LLVM_SUFFIX.sub("", symbol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("functions")
    parser.add_argument("traces")
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args()

    names = collections.defaultdict(list)
    for line in Path(args.functions).read_text().splitlines():
        address, name = line.split(" ", 1)
        names[int(address)].append(name)
    entries = sorted(names)

    listed: dict[str, None] = {}
    per_workload: dict[str, list[int]] = {}
    for trace in sorted(Path(args.traces).iterdir()):
        workload = trace.name.rsplit(".", 1)[0]
        data = trace.read_bytes()
        indices = struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4])
        before = len(listed)
        for index in indices:
            for symbol in names[entries[index]]:
                listed.setdefault(stable_name(symbol), None)
        counts = per_workload.setdefault(workload, [0, 0, 0])
        counts[0] += 1
        counts[1] = max(counts[1], len(indices))
        counts[2] += len(listed) - before

    print("# Functions a running cellet node executes, in first-use order: the release link places")
    print("# them first (host/link/order-by-use). Made by bench/layout/train at " + args.commit + ";")
    print("# symbol names without the `.llvm.<digits>` suffix that changes with every edit.")
    for workload, (processes, most, new) in per_workload.items():
        print(f"# {workload}: {processes} cellet process(es), up to {most} functions each, {new} symbols new")
    for name in listed:
        print(name)


if __name__ == "__main__":
    main()
