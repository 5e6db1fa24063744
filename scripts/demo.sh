#!/usr/bin/env bash
# portfw demo: a throwaway server namespace and client namespace joined by a
# veth pair; examples/policy.yaml applied in the server namespace; the owner
# (www-data) served on reserved port 8080, a squatter (nobody) blocked on
# reserved port 8443; counters shown. Everything is removed at the end.
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

cleanup() {
	jobs -p | xargs -r kill 2>/dev/null || true
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
ip netns exec "$SRV" "$PORTFW" apply -f "$WORK/etc/policy.yaml"

# serve NAME UID GID PORT: a TCP server in the server namespace; it runs
# until its stdin (a sleep) goes away.
serve() {
	local name=$1 uid=$2 gid=$3 port=$4
	sleep 600 | ip netns exec "$SRV" "$PEER" serve -proto tcp -addr "[::]:$port" -uid "$uid" -gid "$gid" \
		-reply "hello from $name" >"$WORK/$name.log" 2>&1 &
	for _ in $(seq 50); do grep -q '"ready"' "$WORK/$name.log" 2>/dev/null && return; sleep 0.1; done
	echo "demo: $name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
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

say "www-data (uid $OWNER) listens on 8080, a port reserved for it"
serve owner "$OWNER" "$OWNER_G" 8080
dial 8080

say "nobody (uid $SQUAT) grabs 8443, also reserved for www-data: the squatter"
serve squatter "$SQUAT" "$SQUAT_G" 8443
dial 8443
dial 8443
read_bytes=$(grep -c '"ev":"read"' "$WORK/squatter.log" || true)
echo "  the squatter read $read_bytes requests"

say "portfw status   (drop counters per reservation)"
ip netns exec "$SRV" "$PORTFW" status -f "$WORK/etc/policy.yaml"

say "portfw remove"
ip netns exec "$SRV" "$PORTFW" remove -f "$WORK/etc/policy.yaml"
dial 8443
echo
echo "demo done: namespaces removed."
