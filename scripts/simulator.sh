# Sourced by the benchmark scripts: the project's simulator as a process of its own.
#
# start_simulator BIN [FLAGS...]: runs `BIN simulate` on a free loopback port with the
# benchmarks' common settings (seed 1, no sends still sending, none unknown) and FLAGS
# after them (latency, --exit-after, faults), waits up to 5 s for it to print its
# URL, and sets sim_url and sim_pid. It writes "$work/sim": the caller has made $work,
# and its EXIT trap stops sim_pid.
start_simulator() {
  local bin=$1
  shift
  "$bin" simulate --port 0 --seed 1 --sending-share 0 --not-found-share 0 "$@" \
    > "$work/sim" 2>/dev/null &
  sim_pid=$!
  for _ in $(seq 1 50); do [ -s "$work/sim" ] && break; sleep 0.1; done
  sim_url=$(head -n 1 "$work/sim")
  [ -n "$sim_url" ] || { echo "the simulator did not start" >&2; exit 1; }
}
