#!/bin/bash
# DHCP throughput: Kea's perfdhcp, acting as a relay agent from its own network namespace,
# against tugboot-dhcpd (authoritative), dnsmasq and kea-dhcp4, one after the other on the
# same pool (10.96.1.0-10.96.40.255, 10 240 addresses), lease time 1 h, leases persisted:
# tugboot's JSON-lines file (write + fsync before the ACK leaves), dnsmasq's lease file,
# Kea's memfile (persist=true). Every run starts with an empty lease file.
#
# Root only; everything happens in two namespaces created here and deleted on exit.
#   sudo pxe-server/dhcp/bench/perfdhcp.sh [path/to/tugboot-dhcpd]
# Environment: RATES="2000 5000 10000" SECS=10 CLIENTS=10000 SERVERS="tugboot dnsmasq kea"
# ("tugboot-1" = tugboot with --max-batch 1: one fsync per lease instead of group commit;
#  KEEP=1 keeps the work directory with every perfdhcp report.)
set -euo pipefail
BIN=${1:-$(dirname "$0")/../../../target/release/tugboot-dhcpd}
RATES=${RATES:-"2000 5000 10000"}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-10000}
SERVERS=${SERVERS:-"tugboot dnsmasq kea"}
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in ip perfdhcp dnsmasq kea-dhcp4 "$BIN"; do
    command -v "$t" >/dev/null || [ -x "$t" ] || { echo "missing: $t" >&2; exit 1; }
done
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

cat > "$WORK/tugboot.toml" <<TOML
mode = "authoritative"
server_address = "10.96.0.1"
http_base_url = "http://10.96.0.1:8080"
[[subnets]]
network = "10.96.0.0/16"
pools = [{ start = "10.96.1.0", end = "10.96.40.255" }]
router = "10.96.0.1"
lease_time_secs = 3600
# perfdhcp reuses each MAC every CLIENTS/rate seconds: lift the per-MAC rate limit
# (dnsmasq and Kea have none) so all three servers do the same work.
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
    rm -f "$WORK"/leases.jsonl "$WORK"/dnsmasq.leases "$WORK"/kea-leases4.csv*
    case $1 in
    tugboot|tugboot-1) ip netns exec "$S" "$BIN" --config "$WORK/tugboot.toml" --leases "$WORK/leases.jsonl" \
                 --interface vs --no-pxe-port --max-batch "$([ "$1" = tugboot ] && echo 64 || echo 1)" \
                 2>"$WORK/server.log" & ;;
    dnsmasq) ip netns exec "$S" dnsmasq --conf-file=/dev/null --no-daemon --port=0 --interface=vs \
                 --bind-interfaces --dhcp-range=10.96.1.0,10.96.40.255,255.255.0.0,1h --no-ping \
                 --dhcp-lease-max=20000 --dhcp-leasefile="$WORK/dnsmasq.leases" --quiet-dhcp \
                 2>"$WORK/server.log" & ;;
    kea) KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec "$S" kea-dhcp4 -c "$WORK/kea.json" \
                 2>"$WORK/server.log" & ;;
    esac
    SRV_PID=$!
    sleep 2
    kill -0 "$SRV_PID" || { cat "$WORK/server.log"; exit 1; }
}
stop_server() { kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=; }
# CPU seconds (user + system) the server process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$SRV_PID/stat"; }

# field N of "drops:" / "received packets:" lines: 1 = DISCOVER-OFFER, 2 = REQUEST-ACK
nth() { grep "^$1" "$2" | sed -n "${3}p" | awk -F': ' '{print $2}' | awk '{print $1}'; }

printf '%-9s %9s %9s %8s %8s %9s %9s %5s %6s\n' server offered/s leases/s DO-drop% RA-drop% ACKs persisted lost cpu-s
for rate in $RATES; do
  for srv in $SERVERS; do
    start_server "$srv"
    out=$WORK/perfdhcp-$srv-$rate.txt
    ip netns exec "$C" perfdhcp -4 -l 10.96.0.2 -r "$rate" -R "$CLIENTS" -p "$SECS" 10.96.0.1 >"$out" 2>&1 || true
    sleep 1
    cpu=$(cpu_s)
    stop_server
    leases=$(grep '^Rate:' "$out" | awk '{print $2}')
    acks=$(nth 'received packets' "$out" 2)
    persisted=- lost=-
    if [ "${srv%-1}" = tugboot ]; then
        # Every ACK perfdhcp received must have its "bound" record in the file.
        persisted=$(grep -c '"state":"bound"' "$WORK/leases.jsonl" || true)
        lost=$(( acks > persisted ? acks - persisted : 0 ))
    fi
    printf '%-9s %9s %9.0f %8.2f %8.2f %9s %9s %5s %6s\n' "$srv" "$rate" "$leases" \
        "$(nth 'drops ratio' "$out" 1)" "$(nth 'drops ratio' "$out" 2)" "$acks" "$persisted" "$lost" "$cpu"
  done
done
