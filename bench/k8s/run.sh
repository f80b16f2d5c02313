#!/bin/sh
# The comparison on a real cluster: each measurement in the direct namespace,
# then in the mesh namespace, ROUNDS times, interleaved. Prints the raw
# figures; the ratios are mesh / direct of the medians.
set -eu
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-30}
for round in $(seq "$ROUNDS"); do
  for ns in bench-direct bench-mesh; do
    echo "== round $round, $ns"
    kubectl -n "$ns" exec deploy/bench-client -c iperf3 -- \
      iperf3 -c bench-server -t "$SECONDS_PER_RUN" -J | grep -m1 -A3 '"sum_received"' | grep bits_per_second
    kubectl -n "$ns" exec deploy/bench-client -c iperf3 -- \
      iperf3 -c bench-server -t "$SECONDS_PER_RUN" -P 4 -J | grep -m1 -A3 '"sum_received"' | grep bits_per_second
    for c in 16 64; do
      # fortio's fixed-rate method: uniform pacing, no catch-up, 1 KiB each way.
      kubectl -n "$ns" exec deploy/bench-client -c fortio -- \
        fortio load -qps 1000 -c "$c" -t "${SECONDS_PER_RUN}s" -uniform -nocatchup \
        -payload-size 1024 -p "50,90,99,99.9" "http://bench-server:8080/echo?size=1024" 2>&1 |
        grep -E "^# target|All done"
    done
  done
done
