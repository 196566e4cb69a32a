#!/usr/bin/env bash
# Starts the orders example with its admin server on a free loopback port,
# drives the page in headless Chromium (page.mjs), then stops the example
# with SIGTERM and checks that it stopped cleanly. Screenshots go to
# target/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/../.."
data_dir="$(mktemp -d)"
out="$(pwd)/target/screenshots"
log="$data_dir/serve.log"
cargo build --locked --release --example orders
./target/release/examples/orders --data-dir "$data_dir" --json --serve --admin-addr 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    grep -q '"serving"' "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "the example exited before serving"; exit 1; }
    sleep 0.1
done
addr="$(grep '"serving"' "$log" | sed -E 's/.*"tcp":"([^"]+)".*/\1/')"
echo "the example serves on http://$addr/ (data in $data_dir)"
status=0
node tests/browser/page.mjs "http://$addr" "$out" || status=$?
kill -TERM "$pid"
wait "$pid" || { echo "the example did not stop cleanly on SIGTERM"; status=1; }
tail -n 3 "$log"
rm -rf "$data_dir"
exit "$status"
