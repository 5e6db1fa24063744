#!/usr/bin/env bash
# `make bench`: portfw's benchmarks, written to docs/performance.md.
#
#  1. Datapath: sockperf TCP and UDP ping-pong between two namespaces over
#     a veth pair, one pair per variant (no table, conntrack only, portfw
#     with 1 / 1k / 10k reservations, the naive rule-per-port ruleset, and
#     the 10k table's cost to traffic on an unreserved port), all set up
#     once and then measured interleaved, round after round, so that the
#     machine's drift hits every variant alike.
#  2. Apply: wall time of `portfw apply` against `nft -f` of the same
#     ruleset, each in a fresh namespace; and where an apply's time goes.
#  3. Compile: Go benchmarks (bench/compile_test.go).
#  4. Reload: `portfw watch` edited by rename, time to the kernel's commit;
#     and a unit owner's restart (its cgroup made anew), time to the commit.
#  5. Bind guard: bind() with and without the guard at 10k reservations, in
#     1 and in 100 namespaces, and the guard's apply (bench/bindguard).
#
# The guards portfw applies here attach to a throwaway cgroup
# (PORTFW_BIND_GUARD_CGROUP), never to the host's root, so the bench leaves
# no program behind.
#
# Everything runs in throwaway namespaces, removed on exit whatever happens.
# Run as root from the repository (the Makefile builds bin/portfw first).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)

ROUNDS=${BENCH_ROUNDS:-8}          # datapath rounds; medians need >= 5
SECS=${BENCH_SECONDS:-2}           # sockperf -t; it adds ~2.3 s of its own per run
RELOAD=${BENCH_RELOAD:-"1000:200 10000:200"}   # reload configs, exact reservations:edits
RESTART=${BENCH_RESTART:-"1000:100 10000:100"} # unit restart configs, reservations:restarts
APPLY_ROUNDS=${BENCH_APPLY_ROUNDS:-5}
APPLY_ROUNDS_100K=${BENCH_APPLY_ROUNDS_100K:-3}
PHASE_ROUNDS=${BENCH_PHASE_ROUNDS:-10}
OUT=${BENCH_OUT:-docs/performance.md}   # BENCH_RESULTS=DIR also keeps the raw results
# Client and server share one CPU: on this kind of VM a wake-up on another
# CPU costs tens of microseconds of idle exit and IPI (measured: 83 us round
# trip unpinned against 15 us pinned), which would dilute what a ruleset
# costs. Pinned, the round trip is mostly the stack's own per-packet work,
# where netfilter's cost is: a stricter test. BENCH_CPU= (empty) unpins.
CPU=${BENCH_CPU-$(($(nproc) - 1))}
PORT=11111                         # the measured port, outside every generated range
FREE_PORT=11112                    # a port no reservation holds
RANGES=4                           # port-range reservations owned by uid ranges

[ "$(id -u)" = 0 ] || { echo "bench: run as root (it creates network namespaces)" >&2; exit 2; }
if ! command -v sockperf >/dev/null || ! command -v gnuplot >/dev/null; then
	echo "bench: installing sockperf and gnuplot"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sockperf gnuplot-nox >/dev/null
fi
for c in nft ip nsenter setpriv go; do
	command -v "$c" >/dev/null || { echo "bench: $c not found (make deps installs it)" >&2; exit 2; }
done

PORTFW=$PWD/bin/portfw
[ -x "$PORTFW" ] || go build -o "$PORTFW" ./cmd/portfw
WORK=$(mktemp -d)
RES=$WORK/results
mkdir -p "$RES/datapath"
PFWBENCH=$WORK/pfwbench
go build -o "$PFWBENCH" ./bench/cmd/pfwbench
# portfw keeps a state file per namespace; keep ours out of /run/portfw.
export PORTFW_STATE_DIR=$WORK/state
# apply refuses a policy in a directory others can write (mktemp's is 0700).
install -m 0700 -d "$WORK/etc"

PFX=pfwb$$
NAMESPACES=()
PIDS=()
# The cgroup2 mount of the hierarchy's root (after mountinfo's "-": the type).
CGROOT=$(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2" && $4 == "/") { print $5; exit } break } }' /proc/self/mountinfo)
[ -n "$CGROOT" ] || { echo "bench: no cgroup v2 mount (the bind guard needs one)" >&2; exit 2; }
mkdir "$CGROOT/$PFX"
export PORTFW_BIND_GUARD_CGROUP=/$PFX
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
	[ -d "$CGROOT/$PFX" ] && find "$CGROOT/$PFX" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
	rmdir "$CGROOT/$PFX" 2>/dev/null || true # detaches what was attached to it
	# BENCH_RESULTS=DIR keeps the raw results (sockperf outputs, JSON, TSV),
	# also of a run that failed.
	[ -z "${BENCH_RESULTS:-}" ] || { mkdir -p "$BENCH_RESULTS" && cp -r "$RES"/. "$BENCH_RESULTS"; } || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
mkns() { ip netns add "$1"; NAMESPACES+=("$1"); ip -n "$1" link set lo up; }
rmns() { ip netns del "$1"; }
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }
PIN=()
[ -z "$CPU" ] || PIN=(taskset -c "$CPU")

SRV_UID=$(id -u nobody)
SRV_GID=$(id -g nobody)

# The synthetic policies (bench/gen): N exact ports, tcp+udp, plus ranges.
gen() { "$PFWBENCH" gen -n "$1" -ranges "$2" -port "$PORT" -uid "$SRV_UID" "${@:3}"; }
gen 1 0 -policy "$WORK/etc/pfw1.yaml"
gen 1000 "$RANGES" -policy "$WORK/etc/pfw1k.yaml"
# 1k unit owners: the same reservations, each owned by a cgroup of its own
# (/$PFX/units/NAME, level 3 below the guard's test cgroup), the server in
# the measured one's.
gen 1000 "$RANGES" -cgroups "/$PFX/units" -cgroup-list "$WORK/units.txt" -policy "$WORK/etc/pfwu1k.yaml"
while read -r cg; do mkdir -p "$CGROOT$cg"; done <"$WORK/units.txt"
gen 10000 "$RANGES" -policy "$WORK/etc/pfw10k.yaml" -naive "$WORK/naive10k.nft"
# 100k: one protocol per reservation (the port space cannot hold 100k of
# both), ports 12000-61999; their namespaces move the ephemeral range out of
# the way (EPHEMERAL_100K), as an admin with such a policy would.
gen 100000 0 -single -policy "$WORK/etc/pfw100k.yaml" -naive "$WORK/naive100k.nft"
EPHEMERAL_100K="62000 65000"
# The policies with one owner changed: what a one-owner apply applies.
for n in 1k 10k 100k; do
	awk '/^  - name: r00001$/ { f = 1 } f && sub(/users: \[[0-9]+\]/, "users: [77777]") { f = 0 } { print }' \
		"$WORK/etc/pfw$n.yaml" >"$WORK/etc/pfw$n-edit.yaml"
	cmp -s "$WORK/etc/pfw$n.yaml" "$WORK/etc/pfw$n-edit.yaml" && { echo "bench: no owner edited in pfw$n" >&2; exit 1; }
done
# Conntrack only: the same fast-path test portfw's check chains start with,
# so the ratio to it isolates portfw's own lookups.
cat >"$WORK/ct.nft" <<'EOF'
table inet ctonly {
	chain output { type filter hook output priority filter; policy accept; ct mark & 0x01000000 == 0x01000000 accept; }
	chain input { type filter hook input priority filter; policy accept; ct mark & 0x01000000 == 0x01000000 accept; }
}
EOF

{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc: $(nproc)"
	echo "CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
	echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel: $(uname -r)"
	echo "nft: $(nft --version)"
	echo "sockperf: $(sockperf --version 2>&1 | sed -n 's/^sockperf, //p' | head -1)"
	echo "Go: $(go version | cut -d' ' -f3-)"
	v=$("$PORTFW" version)
	echo "portfw: ${v%%$'\n'*}"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "datapath rounds: $ROUNDS"
	echo "seconds per run: $SECS"
	echo "client and server pinned to CPU: ${CPU:-no (unpinned)}"
} >"$RES/machine.txt"

cat >"$RES/commands.txt" <<EOF
# policies: $PORT/tcp+udp for uid $SRV_UID (nobody) plus filler ports 12000.. and 4 ranges 23000-23399
pfwbench gen -n 10000 -ranges 4 -port $PORT -uid $SRV_UID -policy pfw10k.yaml -naive naive10k.nft
# datapath, per variant: a veth pair SRV 192.0.2.1 <-> CLI 192.0.2.2, the table in SRV
nsenter --net=/run/netns/SRV portfw apply -f pfw10k.yaml        # or nft -f ct.nft / naive10k.nft
nsenter --net=/run/netns/SRV ${PIN[*]} setpriv --reuid $SRV_UID --regid $SRV_GID --clear-groups sockperf sr [--tcp] -i 192.0.2.1 -p $PORT
nsenter --net=/run/netns/CLI ${PIN[*]} sockperf pp [--tcp] -i 192.0.2.1 -p $PORT -m 64 -t $SECS --full-rtt
# (pfw10k "unreserved port": the same with servers and client on port $FREE_PORT, which no reservation holds)
# pfw100k, naive100k: pfwbench gen -n 100000 -single (one protocol each, ports 12000-61999), ip_local_port_range "$EPHEMERAL_100K" in SRV
# apply, each in a fresh namespace NS, timed with pfwbench run (wall time, peak RSS), for 1k, 10k, 100k:
nsenter --net=/run/netns/NS portfw apply -f pfw10k.yaml        # fresh; then again (in sync); portfw status; then
nsenter --net=/run/netns/NS portfw apply -f pfw10k-edit.yaml   # one owner changed
portfw compile -f pfw10k.yaml > pfw10k.nft; nsenter --net=/run/netns/NS nft -f pfw10k.nft
nsenter --net=/run/netns/NS pfwbench phases -policy pfw10k.yaml -rounds $PHASE_ROUNDS -o phases.json
# compile
go test -run '^\$' -bench . -benchtime 10x -count 5 ./bench/
# reload, in a fresh namespace NS, per reservations:edits in "$RELOAD"
nsenter --net=/run/netns/NS pfwbench reload -portfw bin/portfw -dir DIR -n N -ranges 4 -edits E -o reload-N.json
# unit restart, in a fresh namespace NS, per reservations:restarts in "$RESTART": the measured reservation owned by a cgroup
nsenter --net=/run/netns/NS pfwbench restart -portfw bin/portfw -dir DIR -n N -ranges 4 -cgroup-dir CG -cgroup-path /PATH -restarts R -o restart-N.json
# pfwu1k: pfwbench gen -n 1000 -ranges 4 -cgroups /PFX/units (each reservation owned by its own cgroup); the servers run in /PFX/units/bench
EOF

# ---- 1. Datapath ----------------------------------------------------------
VARIANTS=(none ct pfw1 pfw1k pfwu1k pfw10k pfw100k naive10k naive100k)
: >"$RES/setup.tsv"
for v in "${VARIANTS[@]}"; do
	s=$PFX-$v-s c=$PFX-$v-c
	mkns "$s"
	mkns "$c"
	ip link add veth0 netns "$s" type veth peer name veth0 netns "$c"
	ip -n "$s" addr add 192.0.2.1/24 dev veth0
	ip -n "$c" addr add 192.0.2.2/24 dev veth0
	ip -n "$s" link set veth0 up
	ip -n "$c" link set veth0 up
	case $v in *100k) ip netns exec "$s" sh -c "echo $EPHEMERAL_100K >/proc/sys/net/ipv4/ip_local_port_range" ;; esac
	t0=$(now_ms)
	case $v in
	none) ;;
	ct) in_ns "$s" nft -f "$WORK/ct.nft" ;;
	naive*) in_ns "$s" nft -f "$WORK/$v.nft" ;;
	pfw*) in_ns "$s" "$PORTFW" apply -f "$WORK/etc/$v.yaml" >/dev/null ;;
	esac
	printf '%s\t%s\n' "$v" $(($(now_ms) - t0)) >>"$RES/setup.tsv"
	ports=("$PORT")
	# pfw10k also serves on a port no reservation holds: what portfw costs
	# the rest of the host's traffic.
	[ "$v" = pfw10k ] && ports+=("$FREE_PORT")
	for port in "${ports[@]}"; do
		for proto in udp tcp; do
			flag=()
			[ "$proto" = tcp ] && flag=(--tcp)
			# nsenter itself, not in_ns: a function would run in a subshell
			# and $! would not be the server's pid, which cleanup kills.
			# pfwu1k: the server runs in the measured reservation's cgroup
			# (the shell moves itself there and execs): only that makes it
			# the owner, since its uid owns nothing in that policy.
			cg=
			[ "$v" = pfwu1k ] && cg=$CGROOT/$PFX/units/bench
			sh -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
				nsenter --net="/run/netns/$s" "${PIN[@]}" setpriv --reuid "$SRV_UID" --regid "$SRV_GID" --clear-groups \
				sockperf sr "${flag[@]}" -i 192.0.2.1 -p "$port" >"$WORK/srv-$v-$proto-$port.log" 2>&1 &
			PIDS+=($!)
		done
	done
	# A veth end is UP only once its peer is up too.
	for _ in $(seq 100); do
		ip -n "$c" -o link show veth0 | grep -q 'state UP' && break
		sleep 0.05
	done
	log "datapath: $v ready"
done
sleep 1

# The measured flows must have taken portfw's owner path: right after each
# run (conntrack forgets a closed flow within seconds) its entry carries the
# OWNED bit (16777216) in every portfw variant, and not on the unreserved
# port. Tallied in sanity.tsv: variant, proto, entries seen, OWNED.
check_flow() { # MEASURED NS PORT PROTO
	local m=$1 ns=$2 port=$3 proto=$4 ct seen owned bad=
	ct=$(in_ns "$ns" sh -c "grep '^ipv4 .* $proto .* dport=$port ' /proc/net/nf_conntrack 2>/dev/null || true")
	seen=$(grep -c . <<<"$ct" || true)
	owned=$(grep -c 'mark=16777216' <<<"$ct" || true)
	printf '%s\t%s\t%s\t%s\n' "$m" "$proto" "$seen" "$owned" >>"$RES/sanity.tsv"
	case $m in
	pfw10kfree) [ "$owned" = 0 ] || bad="a flow to the unreserved port was marked OWNED" ;;
	pfw*) [ "$owned" -gt 0 ] || bad="no flow was marked OWNED" ;;
	esac
	[ -z "$bad" ] || { log "sanity: $m/$proto: $bad; conntrack entries:"; echo "$ct" >&2; exit 1; }
}
: >"$RES/sanity.tsv"
# What is measured: the variants, and pfw10kfree, the pfw10k pair on the
# unreserved port.
MEASURED=("${VARIANTS[@]}" pfw10kfree)
for r in $(seq "$ROUNDS"); do
	log "datapath round $r/$ROUNDS"
	n=${#MEASURED[@]}
	for i in $(seq 0 $((n - 1))); do
		# Rotate the order every round, so no variant always runs first.
		m=${MEASURED[$(((i + r) % n))]}
		v=$m port=$PORT
		[ "$m" = pfw10kfree ] && v=pfw10k port=$FREE_PORT
		for proto in tcp udp; do
			flag=()
			[ "$proto" = tcp ] && flag=(--tcp)
			f=$RES/datapath/$m-$proto-$r.txt
			if ! in_ns "$PFX-$v-c" "${PIN[@]}" sockperf pp "${flag[@]}" -i 192.0.2.1 -p "$port" -m 64 -t "$SECS" --full-rtt >"$f" 2>&1; then
				log "sockperf failed for $v/$proto:"; cat "$f" >&2; exit 1
			fi
			check_flow "$m" "$PFX-$v-s" "$port" "$proto"
		done
	done
done

for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
for v in "${VARIANTS[@]}"; do rmns "$PFX-$v-s"; rmns "$PFX-$v-c"; done

# ---- 2. Apply -------------------------------------------------------------
mkns "$PFX-compile"
# pfw100k reserves ports of the default ephemeral range; apply refuses that.
ip netns exec "$PFX-compile" sh -c "echo $EPHEMERAL_100K >/proc/sys/net/ipv4/ip_local_port_range"
for n in 1k 10k 100k; do in_ns "$PFX-compile" "$PORTFW" compile -f "$WORK/etc/pfw$n.yaml" >"$WORK/pfw$n.nft"; done
rmns "$PFX-compile"
: >"$RES/apply.tsv"
# timed SIZE TOOL NS CMD...: CMD in NS, its wall time and peak memory to apply.tsv
timed() {
	local size=$1 tool=$2 ns=$3
	shift 3
	"$PFWBENCH" run -label "$size	$tool" -o "$RES/apply.tsv" -- nsenter --net="/run/netns/$ns" "$@" >/dev/null
}
for n in 1k 10k 100k; do
	size=${n/k/000}
	rounds=$APPLY_ROUNDS
	[ "$n" = 100k ] && rounds=$APPLY_ROUNDS_100K
	for r in $(seq "$rounds"); do
		log "apply $n round $r/$rounds"
		order=(portfw nft)
		[ $((r % 2)) = 0 ] && order=(nft portfw)
		for tool in "${order[@]}"; do
			ns=$PFX-apply
			mkns "$ns"
			[ "$n" = 100k ] && ip netns exec "$ns" sh -c "echo $EPHEMERAL_100K >/proc/sys/net/ipv4/ip_local_port_range"
			if [ "$tool" = portfw ]; then
				timed "$size" portfw "$ns" "$PORTFW" apply -f "$WORK/etc/pfw$n.yaml"
				timed "$size" insync "$ns" "$PORTFW" apply -f "$WORK/etc/pfw$n.yaml"
				timed "$size" status "$ns" "$PORTFW" status
				timed "$size" change "$ns" "$PORTFW" apply -f "$WORK/etc/pfw$n-edit.yaml"
			else
				timed "$size" nft "$ns" nft -f "$WORK/pfw$n.nft"
				# Same table as portfw's own apply, or the comparison is void
				# (diff exits 1 all the same: nft -f loads no bind guard).
				out=$(in_ns "$ns" "$PORTFW" diff -f "$WORK/etc/pfw$n.yaml" 2>&1 || true)
				[[ $out == *"table unchanged"* ]] || { echo "bench: nft -f of portfw compile made another table: $out" >&2; exit 1; }
			fi
			rmns "$ns"
		done
	done
done
log "apply phases"
mkns "$PFX-phases"
in_ns "$PFX-phases" "$PFWBENCH" phases -policy "$WORK/etc/pfw10k.yaml" -rounds "$PHASE_ROUNDS" -o "$RES/phases.json"
rmns "$PFX-phases"

# ---- 3. Compile -----------------------------------------------------------
log "go benchmarks"
go test -run '^$' -bench . -benchtime 10x -count 5 ./bench/ >"$RES/gobench.txt"

# ---- 4. Reload ------------------------------------------------------------
for cfg in $RELOAD; do
	n=${cfg%%:*} edits=${cfg##*:}
	log "reload: $n reservations, $edits edits"
	ns=$PFX-reload
	mkns "$ns"
	install -m 0700 -d "$WORK/reload-$n"
	in_ns "$ns" "$PFWBENCH" reload -portfw "$PORTFW" -dir "$WORK/reload-$n" -n "$n" -ranges "$RANGES" \
		-port "$PORT" -uid "$SRV_UID" -edits "$edits" -o "$RES/reload-$n.json"
	rmns "$ns"
done
# A unit's restart while the daemon runs: its cgroup removed and made anew.
for cfg in $RESTART; do
	n=${cfg%%:*} restarts=${cfg##*:}
	log "unit restart: $n reservations, $restarts restarts"
	ns=$PFX-restart
	mkns "$ns"
	install -m 0700 -d "$WORK/restart-$n"
	in_ns "$ns" "$PFWBENCH" restart -portfw "$PORTFW" -dir "$WORK/restart-$n" -n "$n" -ranges "$RANGES" \
		-port "$PORT" -uid "$SRV_UID" -cgroup-dir "$CGROOT/$PFX/restart-$n" -cgroup-path "/$PFX/restart-$n" \
		-restarts "$restarts" -o "$RES/restart-$n.json"
	rmns "$ns"
done

# ---- 5. Bind guard --------------------------------------------------------
log "bind guard"
go run ./bench/bindguard -o "$RES/bindguard.md"
echo "go run ./bench/bindguard" >>"$RES/commands.txt"

{
	echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "make bench took: $((($(date +%s) - START + 30) / 60)) min"
} >>"$RES/machine.txt"
"$PFWBENCH" report -results "$RES" -o "$OUT"
# The figures, beside the page (report wrote their data into $RES).
IMG=$(dirname "$OUT")
RELOADS=$(for f in "$RES"/reload-*.dat; do n=$(basename "$f" .dat); printf '"%s" using 1:2 with steps title "%s reservations", ' "$f" "${n#reload-}"; done | sed 's/, $//')
gnuplot <<GNUPLOT
set terminal svg size 720,420 dynamic font "sans,11"
set output "$IMG/perf-datapath.svg"
set title "Round trip through a reserved port (64-byte ping-pong, median of means)"
set logscale xy
set xlabel "reservations"
set ylabel "round trip (us)"
set key top left
set grid
plot "$RES/datapath.dat" using 1:2 with linespoints title "portfw TCP", \
     "" using 1:3 with linespoints title "portfw UDP", \
     "" using 1:4 with lines dashtype 2 title "conntrack only TCP", \
     "" using 1:5 with lines dashtype 2 title "conntrack only UDP", \
     "" using 1:6 with linespoints title "naive rules TCP", \
     "" using 1:7 with linespoints title "naive rules UDP"
set output "$IMG/perf-reload.svg"
set title "portfw watch: policy written -> kernel commit"
unset logscale
set logscale x
set xlabel "latency (ms)"
set ylabel "fraction of edits"
set key bottom right
plot $RELOADS
GNUPLOT
log "wrote $OUT and its figures"
