#!/usr/bin/env python3
"""Sums a callgrind profile's self cost (instructions) by crate, per request.

usage: by_crate.py CALLGRIND_OUT REQUESTS
"""
import re
import subprocess
import sys
from collections import Counter

out, requests = sys.argv[1], int(sys.argv[2])
text = subprocess.run(
    ["callgrind_annotate", "--auto=no", "--inclusive=no", "--threshold=100", out],
    capture_output=True, text=True, check=True,
).stdout
total = None
costs = Counter()
functions = Counter()
for line in text.splitlines():
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
    if not m:
        continue
    ir, where = int(m.group(1).replace(",", "")), m.group(2)
    if where.startswith("PROGRAM TOTALS"):
        total = ir
        continue
    # Entry points carry the whole run (a callgrind quirk of per-thread dumps): skip them.
    if ir >= (total or 0) * 0.9:
        continue
    crate = re.search(r"/index\.crates\.io-[0-9a-f]+/([A-Za-z0-9_-]+?)-\d+\.\d+\.\d+[^/]*/", where)
    if crate:
        name = crate.group(1)
    elif "/rustc/" in where:
        name = "std (core, alloc)"
    elif re.search(r"/src/[^:]*\.rs:scoregate", where) or ":scoregate::" in where:
        name = "scoregate"
    elif any(w in where for w in ("libc.so", "malloc", "memmove", "memcpy", "jemalloc", "tcache")):
        name = "libc and the allocator (memcpy, malloc)"
    else:
        name = "other"
    costs[name] += ir
    function = re.sub(r"\s*\[[^\]]*\]$", "", where.split(":", 1)[-1])
    functions[function[:110]] += ir
print(f"total: {total:,} instructions, {total // requests:,} per request")
print()
print("| source of the instructions (crate of the code, after inlining) | instructions per request | share |")
print("|---|---:|---:|")
for name, ir in costs.most_common():
    if ir / total >= 0.005:
        print(f"| {name} | {ir // requests:,} | {100 * ir / total:.1f} % |")
print()
print("| top functions (self, inlined code included) | instructions per request |")
print("|---|---:|")
for fn, ir in functions.most_common(25):
    print(f"| `{fn}` | {ir // requests:,} |")
