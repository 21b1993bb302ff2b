#!/usr/bin/env bash
# Instructions per request of one contender and scenario, and of the bare WSGI
# app under it: callgrind counts two runs of 2000 and 22000 requests, and the
# difference divided by 20000 leaves out start-up, building and warm-up. Unlike
# time, the count hardly moves when other programs share the machine, so it
# shows a change of a few percent (string hashing is seeded the same every run,
# so dict layouts repeat too). It counts user-space instructions only:
# time spent in the kernel (a store's system calls) is not in it.
#
#   bench/instructions.sh fastsess-c-memory read [--payload 4KB]
#   bench/instructions.sh fastsess-py-memory modify    (the pure-Python kernel)
#
# Needs valgrind. PYTHON defaults to .venv/bin/python when present.
set -euo pipefail
shopt -s inherit_errexit  # a failed run inside $(...) stops the script
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 CONTENDER SCENARIO [--payload 300B|4KB]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() {  # contender scenario requests [args...]: total instructions of one run
    local log="$out/log"
    PYTHONHASHSEED=0 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
        "$python" bench/harness.py "$1" "$2" --loop -n "$3" "${@:4}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    grep -o "Collected : [0-9]*" "$log" | grep -o "[0-9]*$"
}

per_request() {
    local a b
    a=$(count "$1" "$2" 2000 "${@:3}")
    b=$(count "$1" "$2" 22000 "${@:3}")
    echo $(((b - a) / 20000))
}

case $1 in fastsess-py-*) export FASTSESS_NO_EXTENSIONS=1 ;; esac  # the harness names contenders by kernel
contender=$(per_request "$@")
bare=$(per_request bare-wsgi "$2")
echo "$1 $2: $contender instructions per request; the bare WSGI app $bare; overhead $((contender - bare))"
