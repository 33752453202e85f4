#!/usr/bin/env bash
# `make test`: the whole suite in two lanes at once. The tests that start a stack of their own (own state
# directory, own ports, shared downloads: the chaos soak, the demo, the quiet-CDC restarts, the stack
# lifecycle) never touch the shared stack, and they spend most of their time waiting on servers, so they run
# beside the rest instead of after it. Both lanes must pass; the second lane's output follows the first's.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=.venv/bin/pytest
# Each of these stacks has its own port offset (the soak 700, the demo 600, quiet CDC 500, lifecycle 200 and
# 300); the shared-stack lane starts one more, the plugin-path test's (400). No two may share one.
OWN_STACK=(tests/e2e tests/integration/test_cdc_quiet.py tests/integration/test_stack_lifecycle.py)

log=$(mktemp -t omnistream-own-stack-tests.XXXXXX)
"$PYTEST" -q --durations=10 "${OWN_STACK[@]}" >"$log" 2>&1 &
own=$!
trap 'kill "$own" 2>/dev/null; rm -f "$log"' INT TERM

ignored=()
for path in "${OWN_STACK[@]}"; do ignored+=("--ignore=$path"); done
"$PYTEST" -q --durations=15 "${ignored[@]}" tests
shared=$?

wait "$own"
own_rc=$?
echo "== tests on stacks of their own (${OWN_STACK[*]})"
cat "$log"
rm -f "$log"
echo "== shared-stack lane exit $shared, own-stack lane exit $own_rc"
exit $((shared != 0 || own_rc != 0))
