#!/bin/bash
# DHCP throughput on the shipped path: Kea's perfdhcp, acting as a relay agent from its own
# network namespace, against `tugboot serve` (the real binary, DHCP authoritative; HTTP on as
# the config requires, no TFTP), dnsmasq and kea-dhcp4, one after the other in the same run and
# on the same pool (10.96.1.0-10.96.40.255, 10 240 addresses), lease time 1 h, leases persisted:
# tugboot's lease log (write + fdatasync before the ACK leaves; compacted as it grows),
# dnsmasq's lease file, Kea's memfile (persist=true). Every run starts with an empty lease file.
#
# Root only; everything happens in two namespaces created here and deleted on exit.
#   cargo build --release -p tugboot
#   sudo pxe-server/dhcp/bench/perfdhcp.sh [path/to/tugboot]
# Environment: RATES="2000 5000 10000 20000" SECS=10 CLIENTS=10000 SERVERS="tugboot dnsmasq kea"
#   ROUNDS=1 (more: the whole table is repeated, rounds interleaved, and a median of leases/s
#   per server and rate is printed at the end: the host is shared, single runs move a lot)
#   TUGBOOT_LOG=warn (RUST_LOG of `tugboot serve`: warn = no line per lease, like Kea's WARN
#   severity and dnsmasq's --quiet-dhcp below; "info" logs every lease)
#   KEEP=1 keeps the work directory with every perfdhcp report and server log.
#   SERVERS may add "tugboot-dhcpd": the stand-alone daemon (DHCPD_BIN, default
#   target/release/tugboot-dhcpd), the same socket loop as `tugboot serve`, for comparison.
set -euo pipefail
BIN=${1:-$(dirname "$0")/../../../target/release/tugboot}
RATES=${RATES:-"2000 5000 10000 20000"}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-10000}
SERVERS=${SERVERS:-"tugboot dnsmasq kea"}
ROUNDS=${ROUNDS:-1}
TUGBOOT_LOG=${TUGBOOT_LOG:-warn}
DHCPD_BIN=${DHCPD_BIN:-$(dirname "$0")/../../../target/release/tugboot-dhcpd}
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in ip perfdhcp dnsmasq kea-dhcp4 curl "$BIN" $([[ " $SERVERS " == *" tugboot-dhcpd "* ]] && echo "$DHCPD_BIN"); do
    command -v "$t" >/dev/null || [ -x "$t" ] || { echo "missing: $t" >&2; exit 1; }
done
BIN=$(realpath "$BIN")
S=tbbench-s-$$; C=tbbench-c-$$
WORK=$(mktemp -d /tmp/tbbench.XXXXXX)
SRV_PID=
cleanup() {
    [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
    ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$S"; ip netns add "$C"
ip -n "$S" link add vs type veth peer name vc netns "$C"
ip -n "$S" addr add 10.96.0.1/16 dev vs; ip -n "$S" link set vs up; ip -n "$S" link set lo up
ip -n "$C" addr add 10.96.0.2/16 dev vc; ip -n "$C" link set vc up; ip -n "$C" link set lo up

# `tugboot serve` needs a trust root (nothing is published here; manifests are not involved).
"$BIN" keys generate --out "$WORK/bench" >/dev/null
"$BIN" keys root init --key "$WORK/bench.pub" --sign "$WORK/bench.key" --out "$WORK/root.json" >/dev/null
cat > "$WORK/serve.toml" <<TOML
data_dir = "$WORK/data"
trust_root = "$WORK/root.json"

[network]
interface = "vs"
address = "10.96.0.1"

[dhcp]
mode = "authoritative"
pxe_port = false
[[dhcp.subnets]]
network = "10.96.0.0/16"
pools = [{ start = "10.96.1.0", end = "10.96.40.255" }]
router = "10.96.0.1"
lease_time_secs = 3600
# perfdhcp reuses each MAC every CLIENTS/rate seconds: lift the per-MAC rate limit
# (dnsmasq and Kea have none) so all three servers do the same work.
[dhcp.limits]
max_pending_offers = 16384
per_mac_burst = 1000
per_mac_per_second = 1000
max_tracked_clients = 65536

[http]
listen = "10.96.0.1:8080"
TOML
"$BIN" check-config --config "$WORK/serve.toml" >/dev/null
# The same DHCP settings for the stand-alone daemon.
cat > "$WORK/dhcpd.toml" <<TOML
mode = "authoritative"
server_address = "10.96.0.1"
http_base_url = "http://10.96.0.1:8080"
[[subnets]]
network = "10.96.0.0/16"
pools = [{ start = "10.96.1.0", end = "10.96.40.255" }]
router = "10.96.0.1"
lease_time_secs = 3600
[limits]
max_pending_offers = 16384
per_mac_burst = 1000
per_mac_per_second = 1000
max_tracked_clients = 65536
TOML
cat > "$WORK/kea.json" <<JSON
{ "Dhcp4": {
  "interfaces-config": { "interfaces": [ "vs" ], "dhcp-socket-type": "udp" },
  "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                      "name": "$WORK/kea-leases4.csv" },
  "valid-lifetime": 3600,
  "subnet4": [ { "id": 1, "subnet": "10.96.0.0/16",
                 "pools": [ { "pool": "10.96.1.0 - 10.96.40.255" } ],
                 "option-data": [ { "name": "routers", "data": "10.96.0.1" } ] } ],
  "loggers": [ { "name": "kea-dhcp4", "output_options": [ { "output": "$WORK/kea.log" } ],
                 "severity": "WARN" } ] } }
JSON

start_server() {
    rm -f "$WORK"/data/dhcp-leases.jsonl* "$WORK"/dhcpd-leases.jsonl* "$WORK"/dnsmasq.leases \
        "$WORK"/kea-leases4.csv*
    : > "$WORK/server.log"
    case $1 in
    tugboot) RUST_LOG=$TUGBOOT_LOG ip netns exec "$S" "$BIN" serve --config "$WORK/serve.toml" \
                 >"$WORK/server.log" 2>&1 & ;;
    tugboot-dhcpd) ip netns exec "$S" "$DHCPD_BIN" --config "$WORK/dhcpd.toml" \
                 --leases "$WORK/dhcpd-leases.jsonl" --interface vs --no-pxe-port \
                 >"$WORK/server.log" 2>&1 & ;;
    dnsmasq) ip netns exec "$S" dnsmasq --conf-file=/dev/null --no-daemon --port=0 --interface=vs \
                 --bind-interfaces --dhcp-range=10.96.1.0,10.96.40.255,255.255.0.0,1h --no-ping \
                 --dhcp-lease-max=20000 --dhcp-leasefile="$WORK/dnsmasq.leases" --quiet-dhcp \
                 >"$WORK/server.log" 2>&1 & ;;
    kea) KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec "$S" kea-dhcp4 -c "$WORK/kea.json" \
                 >"$WORK/server.log" 2>&1 & ;;
    esac
    SRV_PID=$!
    if [ "$1" = tugboot ]; then
        # RUST_LOG=warn hides the ready line: wait for the HTTP port instead.
        for _ in $(seq 1 100); do
            ip netns exec "$S" curl -sf -o /dev/null http://10.96.0.1:8080/metrics && break
            kill -0 "$SRV_PID" || { cat "$WORK/server.log"; exit 1; }
            sleep 0.1
        done
    fi
    sleep 1
    kill -0 "$SRV_PID" || { cat "$WORK/server.log"; exit 1; }
}
stop_server() { kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=; }
# CPU seconds (user + system) the server process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$SRV_PID/stat"; }
metric() { awk -v m="tugboot_dhcp_$1_total" '$1 == m {print $2}' "$WORK/metrics.txt"; }

# field N of "drops:" / "received packets:" lines: 1 = DISCOVER-OFFER, 2 = REQUEST-ACK
nth() { grep "^$1" "$2" | sed -n "${3}p" | awk -F': ' '{print $2}' | awk '{print $1}'; }

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-13s %9s %9s %8s %8s %9s %9s %5s %5s %6s\n' \
    server offered/s leases/s DO-drop% RA-drop% ACKs persisted lost comp cpu-s
for round in $(seq 1 "$ROUNDS"); do
for rate in $RATES; do
  for srv in $SERVERS; do
    start_server "$srv"
    out=$WORK/perfdhcp-$srv-$rate.txt
    ip netns exec "$C" nstat -n >/dev/null 2>&1 || true
    ip netns exec "$C" perfdhcp -4 -l 10.96.0.2 -r "$rate" -R "$CLIENTS" -p "$SECS" 10.96.0.1 >"$out" 2>&1 || true
    ip netns exec "$C" nstat >"$WORK/nstat-client-$srv-$rate.txt" 2>&1 || true
    sleep 1
    cpu=$(cpu_s)
    acks=$(nth 'received packets' "$out" 2)
    persisted=- lost=- comp=-
    if [ "$srv" = tugboot-dhcpd ]; then
        stop_server
        # It prints its counters when it stops.
        tr ' ' '\n' <"$WORK/server.log" | grep -E '^(lease_records_persisted|lease_log_compactions)=' \
            | sed 's/^/tugboot_dhcp_/; s/=/_total /' >"$WORK/metrics.txt"
        persisted=$(metric lease_records_persisted)
        comp=$(metric lease_log_compactions)
        lost=$(( acks > persisted ? acks - persisted : 0 ))
    fi
    if [ "$srv" = tugboot ]; then
        # Every ACK perfdhcp received must be a durable lease record (counted by the loop once
        # its fdatasync or compaction returned; the log is compacted, so count there, not lines).
        ip netns exec "$S" curl -sf http://10.96.0.1:8080/metrics >"$WORK/metrics.txt"
        cp "$WORK/metrics.txt" "$WORK/metrics-$srv-$rate.txt"
        persisted=$(metric lease_records_persisted)
        comp=$(metric lease_log_compactions)
        lost=$(( acks > persisted ? acks - persisted : 0 ))
    fi
    [ -n "$SRV_PID" ] && stop_server
    cp "$WORK/server.log" "$WORK/server-$srv-$rate.log"
    leases=$(grep '^Rate:' "$out" | awk '{print $2}')
    printf '%-13s %9s %9.0f %8.2f %8.2f %9s %9s %5s %5s %6s\n' "$srv" "$rate" "$leases" \
        "$(nth 'drops ratio' "$out" 1)" "$(nth 'drops ratio' "$out" 2)" "$acks" "$persisted" "$lost" "$comp" "$cpu" \
        | tee -a "$WORK/rows.txt"
  done
done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$ROUNDS" -gt 1 ]; then
    echo "median leases/s over $ROUNDS rounds (min-max):"
    for rate in $RATES; do
        for srv in $SERVERS; do
            awk -v s="$srv" -v r="$rate" '$1 == s && $2 == r {print $3}' "$WORK/rows.txt" | sort -n \
                | awk -v s="$srv" -v r="$rate" '{v[NR]=$1} END {printf "%-13s %9s %9.0f  (%.0f-%.0f)\n", s, r, \
                    (NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2), v[1], v[NR]}'
        done
    done
fi
