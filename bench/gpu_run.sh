#!/usr/bin/env bash
# On a GPU machine without internet access (see scripts/gpu-wheels.sh): install the wheels from .whl/ beside
# its PyTorch, run bench/gpu_suite.sh, and, where OUT names a folder, write there two files: results.jsonl
# (every step's JSON line, named) and bench.tgz (every step's JSON and log). Without OUT the results stay in
# bench-results/.
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the wheels from .whl/ failed (run scripts/gpu-wheels.sh first)" >&2; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
results=${OUT:+/tmp/bench-results}
results=${results:-bench-results}
bash bench/gpu_suite.sh "$results" "$@"
if [ -n "${OUT:-}" ]; then
    python3 - "$results" > "$OUT/results.jsonl" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    lines = path.read_text().strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (ValueError, IndexError):  # a step that printed no JSON line (env, tests): its text as it is
        result = "\n".join(lines)
    print(json.dumps({"step": path.stem, "result": result}))
PY
    tar czf "$OUT/bench.tgz" -C "$results" .
    ls -la "$OUT"
fi
