#!/usr/bin/env bash
# The LLM routing benchmark (issue 18): every picking policy on 4 simulated LLM pods, the same
# multi-turn chat workload, side by side; then the same with one pod 3× slower. Writes the table
# into benches/RESULTS.md (section "LLM routing") unless --out says otherwise.
#
#   benches/llm/run.sh                    # capacity first (25 s), then 60 s per scenario after
#                                         # 10 s of warm-up (~10 minutes, plus the optimised build)
#   benches/llm/run.sh --duration 20      # shorter
#
# The load is 70 % of the capacity the run measures first (closed loop, P2C, 4 equal pods). Other
# flags go to the benchmark: --load SHARE (of that capacity), --rate R (requests/s, Poisson; skips
# the calibration), --seed N, --only a,b.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
COMMAND_LINE="benches/llm/run.sh${*:+ $*}"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
cargo bench --locked --bench llm -- --out "$OUT" "$@"
python3 - "$ROOT/benches/RESULTS.md" "$OUT" "$COMMAND_LINE" <<'PY'
import sys, datetime
path, table_file, command = sys.argv[1:]
table = open(table_file).read().strip()
start, end = "<!-- llm-bench:start -->", "<!-- llm-bench:end -->"
section = (f"{start}\n## LLM routing (issue 18)\n\nCommand: `{command}` "
           f"({datetime.date.today().isoformat()}, on this repository's 2-core machine).\n\n{table}\n{end}")
text = open(path).read()
if start in text:
    text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "benches/RESULTS.md updated"
