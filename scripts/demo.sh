#!/usr/bin/env bash
# portfw demo: a throwaway server namespace and client namespace joined by a
# veth pair; examples/policy.yaml applied in the server namespace; the owner
# (www-data) served on reserved ports 80 (without root) and 8080; a squatter
# (nobody) refused by the bind guard on reserved port 8443, then, with the
# guard off, bound but starved by the nftables rules; counters shown. And an
# owner that is a service: a cgroup standing in for a systemd unit owns 9000,
# whatever the uid of what runs in it.
# Everything is removed at the end, the guard's entries too (`portfw remove`).
# Run as root: `make demo` builds bin/portfw and bin/peer first.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 2; }
PORTFW=$PWD/bin/portfw
PEER=$PWD/bin/peer
SRV=pfw-demo-srv-$$
CLI=pfw-demo-cli-$$
WORK=$(mktemp -d)
export PORTFW_STATE_DIR=$WORK/state

# The cgroup v2 hierarchy's root mount (after mountinfo's "-": the type).
CGROOT=$(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2" && $4 == "/") { print $5; exit } break } }' /proc/self/mountinfo)
SLICE=pfw-demo-$$.slice
UNIT=/$SLICE/web.service

cleanup() {
	jobs -p | xargs -r kill 2>/dev/null || true
	[ -z "${APPLIED:-}" ] || ip netns exec "$SRV" "$PORTFW" remove >/dev/null 2>&1 || true
	if [ -n "$CGROOT" ]; then
		for _ in $(seq 50); do rmdir "$CGROOT$UNIT" "$CGROOT/$SLICE" 2>/dev/null && break; sleep 0.1; done
	fi
	ip netns del "$SRV" 2>/dev/null || true
	ip netns del "$CLI" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

say() {
	if [ -t 1 ]; then printf '\n\033[1m## %s\033[0m\n' "$*"; else printf '\n## %s\n' "$*"; fi
}

id www-data >/dev/null
id nobody >/dev/null
OWNER=$(id -u www-data); OWNER_G=$(id -g www-data)
SQUAT=$(id -u nobody); SQUAT_G=$(id -g nobody)

say "two namespaces joined by a veth pair: $SRV (192.0.2.1) and $CLI (192.0.2.2)"
ip netns add "$SRV"
ip netns add "$CLI"
ip link add veth0 netns "$SRV" type veth peer name veth0 netns "$CLI"
ip -n "$SRV" addr add 192.0.2.1/24 dev veth0
ip -n "$CLI" addr add 192.0.2.2/24 dev veth0
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; ip -n "$ns" link set veth0 up; done

# apply wants a root-owned policy nobody else can write.
install -m 0700 -d "$WORK/etc"
install -m 0644 examples/policy.yaml "$WORK/etc/policy.yaml"

say "portfw apply -f examples/policy.yaml   (in $SRV)"
APPLIED=1
ip netns exec "$SRV" "$PORTFW" apply -f "$WORK/etc/policy.yaml"

# serve NAME UID GID PORT [CGROUP]: a TCP server in the server namespace
# (in the cgroup directory CGROUP, if given); it runs until its stdin (a
# sleep) goes away. Returns 1 (and prints why) if it could not bind.
serve() {
	local name=$1 uid=$2 gid=$3 port=$4 cg=() enter=(ip netns exec "$SRV")
	# ip netns exec remounts /sys, hiding the cgroup tree: nsenter keeps it.
	[ -z "${5:-}" ] || { cg=(-cgroup "$5"); enter=(nsenter --net="/run/netns/$SRV"); }
	sleep 600 | "${enter[@]}" "$PEER" serve -proto tcp -addr "[::]:$port" -uid "$uid" -gid "$gid" "${cg[@]}" \
		-reply "hello from $name" >"$WORK/$name-$port.log" 2>&1 &
	for _ in $(seq 50); do
		grep -q '"ready"' "$WORK/$name-$port.log" 2>/dev/null && return 0
		if grep -q '^peer: ' "$WORK/$name-$port.log" 2>/dev/null; then
			printf '  %s (uid %s) cannot listen on %s: %s\n' "$name" "$uid" "$port" "$(sed -n 's/^peer: //p' "$WORK/$name-$port.log")"
			return 1
		fi
		sleep 0.1
	done
	echo "demo: $name did not start:" >&2; cat "$WORK/$name-$port.log" >&2; exit 1
}

# dial PORT: connect from the client namespace, print what came back.
dial() {
	local port=$1 out received
	out=$(ip netns exec "$CLI" "$PEER" dial -proto tcp -addr "192.0.2.1:$port" -send "GET / HTTP/1.0" -timeout 2s)
	received=$(sed -n 's/.*"received":"\([^"]*\)".*/\1/p' <<<"$out" | base64 -d)
	if [ -n "$received" ]; then
		printf '  client -> 192.0.2.1:%s: got "%s"\n' "$port" "$received"
	else
		printf '  client -> 192.0.2.1:%s: got nothing (%s)\n' "$port" "$(sed -n 's/.*"err":"\([^"]*\)".*/\1/p' <<<"$out")"
	fi
}

say "www-data (uid $OWNER) listens on 80 and 8080, ports reserved for it (80 without root: the guard grants it)"
serve owner "$OWNER" "$OWNER_G" 80
serve owner "$OWNER" "$OWNER_G" 8080
dial 80
dial 8080

say "nobody (uid $SQUAT) tries to grab 8443, also reserved for www-data, and 81, reserved by nobody"
if serve squatter "$SQUAT" "$SQUAT_G" 8443; then echo "demo: the guard let the squatter bind 8443" >&2; exit 1; fi
if serve squatter "$SQUAT" "$SQUAT_G" 81; then echo "demo: nobody bound a low port" >&2; exit 1; fi

if [ -n "$CGROOT" ]; then
	say "a service as owner: 9000 belongs to the cgroup $UNIT (a stand-in for a systemd unit's), whatever the uid in it"
	mkdir -p "$CGROOT$UNIT"
	{ cat examples/policy.yaml; printf '  - name: app\n    ports: [9000]\n    protocols: [tcp]\n    owner: { cgroups: ["%s"] }\n' "$UNIT"; } >"$WORK/etc/units.yaml"
	ip netns exec "$SRV" "$PORTFW" apply -f "$WORK/etc/units.yaml" 2>/dev/null | grep -E '^applied|app:'
	serve service "$SQUAT" "$SQUAT_G" 9000 "$CGROOT$UNIT"
	echo "  nobody (uid $SQUAT) in $UNIT listens on 9000"
	dial 9000
	if serve outsider "$SQUAT" "$SQUAT_G" 9000; then echo "demo: the guard let a process outside the unit bind 9000" >&2; exit 1; fi
fi

say "the same policy with bind_guard: off (a host without the guard): the rules alone starve the squatter"
sed 's/^  bind_guard: auto .*/  bind_guard: off/' examples/policy.yaml >"$WORK/etc/noguard.yaml"
ip netns exec "$SRV" "$PORTFW" apply -f "$WORK/etc/noguard.yaml"
serve squatter "$SQUAT" "$SQUAT_G" 8443
dial 8443
dial 8443
read_bytes=$(grep -c '"ev":"read"' "$WORK/squatter-8443.log" || true)
echo "  the squatter read $read_bytes requests"

say "portfw status   (drop counters per reservation)"
ip netns exec "$SRV" "$PORTFW" status -f "$WORK/etc/noguard.yaml"

say "portfw remove"
ip netns exec "$SRV" "$PORTFW" remove
APPLIED=
dial 8443
echo
echo "demo done: namespaces removed."
