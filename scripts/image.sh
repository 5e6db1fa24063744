#!/usr/bin/env bash
# image.sh build: build localhost/portfw:VERSION from the Containerfile
#                 (bin/portfw-static must exist: `make image` builds it).
# image.sh test:  run that image as the DaemonSet runs it, against a network
#                 namespace of its own: the policy in the ConfigMap layout
#                 (..data symlink, read-only, a 0777 volume root), the host's
#                 /etc for names; an owner is served, a squatter refused and
#                 starved; then the policy is edited by swapping ..data, as
#                 the kubelet does, and the change is enforced.
# podman (installed with apt-get when neither it nor a working docker is
# there) or docker. Run as root: `make test-packages`.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
image=localhost/portfw:$version

engine() {
	if command -v podman >/dev/null; then echo podman; return; fi
	if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
	echo "image: installing podman" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
	echo podman
}
ENGINE=$(engine)

# run_opts: what this host needs to run a container at all. crun refuses
# a hybrid cgroup v1/v2 host, runc does not; the sandbox this runs in may
# refuse raising rlimits, so they are set at or below the current ones.
run_opts() {
	[ "$ENGINE" = podman ] || return 0
	if [ -d /sys/fs/cgroup/unified ] && command -v runc >/dev/null; then printf -- '--runtime runc '; fi
	printf -- '--ulimit nofile=%s:%s --ulimit nproc=%s:%s ' "$(ulimit -Sn)" "$(ulimit -Sn)" 1024 1024
}

build() {
	[ -x bin/portfw-static ] || { echo "image: bin/portfw-static missing: run make image" >&2; exit 2; }
	[[ $(go version -m bin/portfw-static) == *CGO_ENABLED=0* ]] || { echo "image: bin/portfw-static is not static (CGO_ENABLED=0)" >&2; exit 1; }
	$ENGINE build -q -f Containerfile -t "$image" . >/dev/null
	echo "$image"
}

test_image() {
	[ "$(id -u)" = 0 ] || { echo "image test: run as root" >&2; exit 2; }
	$ENGINE image exists "$image" 2>/dev/null || $ENGINE image inspect "$image" >/dev/null 2>&1 || build >/dev/null
	[ -x bin/peer ] || go build -o bin/peer ./testenv/peer
	local SRV=pfw-img-srv-$$ CLI=pfw-img-cli-$$ NAME=pfw-img-$$ WORK
	WORK=$(mktemp -d)
	# shellcheck disable=SC2064
	trap "set +e; $ENGINE rm -f $NAME >/dev/null 2>&1; jobs -p | xargs -r kill 2>/dev/null;
		ip netns exec $SRV bin/portfw remove >/dev/null 2>&1; ip netns del $SRV 2>/dev/null; ip netns del $CLI 2>/dev/null;
		umount -l $WORK/cm 2>/dev/null; rm -rf $WORK" EXIT
	fail() { echo "image test: FAIL: $*" >&2; $ENGINE logs "$NAME" >&2 2>&1 || true; exit 1; }

	ip netns add "$SRV"; ip netns add "$CLI"
	ip link add veth0 netns "$SRV" type veth peer name veth0 netns "$CLI"
	ip -n "$SRV" addr add 192.0.2.1/24 dev veth0
	ip -n "$CLI" addr add 192.0.2.2/24 dev veth0
	for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; ip -n "$ns" link set veth0 up; done

	# The ConfigMap volume as the kubelet makes it: a tmpfs whose root is
	# 0777, the data in a timestamped directory, ..data and policy.yaml
	# symlinks; mounted read-only into the container.
	mkdir -p "$WORK/cm" "$WORK/state"
	mount -t tmpfs -o mode=0777 tmpfs "$WORK/cm"
	policy() { # policy DIR PORTS
		mkdir -m 0755 "$WORK/cm/$1"
		cat > "$WORK/cm/$1/policy.yaml" <<-POLICY
		version: 1
		settings:
		  bind_guard: auto
		reservations:
		  - name: web
		    ports: [$2]
		    protocols: [tcp]
		    owner: { users: [www-data] }
		POLICY
		chmod 0644 "$WORK/cm/$1/policy.yaml"
	}
	policy ..2026_12_01_00_00_00.1 "8080, 8443"
	ln -s ..2026_12_01_00_00_00.1 "$WORK/cm/..data"
	ln -s ..data/policy.yaml "$WORK/cm/policy.yaml"

	# As the DaemonSet runs it: no --insecure-policy-perms, the
	# capabilities it lists, the host's /etc, the state directory.
	# shellcheck disable=SC2046
	$ENGINE run -d --name "$NAME" $(run_opts) --network "ns:/run/netns/$SRV" --pid host \
		--cap-drop all --cap-add NET_ADMIN --cap-add BPF --cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add DAC_READ_SEARCH \
		--read-only -v "$WORK/cm:/etc/portfw:ro" -v /etc:/host/etc:ro -v "$WORK/state:/run/portfw" \
		"$image" watch -f /etc/portfw/policy.yaml --log-format json --audit-interval 0 >/dev/null
	wait_log() { # wait_log PATTERN N
		for _ in $(seq 100); do
			local logs; logs=$($ENGINE logs "$NAME" 2>&1)
			[ "$(grep -c -- "$1" <<<"$logs")" -ge "$2" ] && return 0
			$ENGINE container inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null | grep -q true || fail "the container exited"
			sleep 0.1
		done
		fail "no log line matching $1 (x$2)"
	}
	wait_log '"msg":"applied"' 1
	[[ $($ENGINE logs "$NAME" 2>&1) == *'"bind_guard":"off"'* ]] && fail "the bind guard did not come up in the container"
	table() { ip netns exec "$SRV" nft list table inet portfw 2>&1 || true; } # whole, for grep -q under pipefail
	[[ $(table) == *'tcp . 8443 comment "web"'* ]] || fail "table not in the namespace: $(table)"

	serve() { # serve NAME USER PORT: 0 if it listens, 1 if its bind was refused
		local log=$WORK/$1-$3.log
		sleep 60 | ip netns exec "$SRV" bin/peer serve -proto tcp -addr "[::]:$3" -uid "$(id -u "$2")" -gid "$(id -g "$2")" \
			-reply "hello from $1" >"$log" 2>&1 &
		for _ in $(seq 50); do
			grep -q '"ready"' "$log" 2>/dev/null && return 0
			grep -q '^peer: ' "$log" 2>/dev/null && return 1
			sleep 0.1
		done
		fail "$1 did not start: $(cat "$log")"
	}
	got() { # got PORT: what the client received from 192.0.2.1:PORT
		ip netns exec "$CLI" bin/peer dial -proto tcp -addr "192.0.2.1:$1" -send hi -timeout 2s |
			sed -n 's/.*"received":"\([^"]*\)".*/\1/p' | base64 -d
	}

	serve owner www-data 8080 || fail "the owner could not listen on 8080: $(cat "$WORK/owner-8080.log")"
	[ "$(got 8080)" = "hello from owner" ] || fail "the owner was not served on 8080"
	serve squatter nobody 8443 && fail "the squatter bound 8443"
	grep -q 'operation not permitted' "$WORK/squatter-8443.log" || fail "the squatter's bind failed otherwise: $(cat "$WORK/squatter-8443.log")"
	# Control: 9090 is not reserved yet, so the same squatter binds it.
	serve squatter nobody 9090 || fail "control: the squatter could not bind unreserved 9090"
	[ "$(got 9090)" = "hello from squatter" ] || fail "control: no reply from the unreserved port"

	# The kubelet's update: a new timestamped directory, ..data swapped by
	# rename. 9090 becomes reserved: the squatter already on it is starved.
	policy ..2026_12_01_00_01_00.2 "8080, 8443, 9090"
	ln -s ..2026_12_01_00_01_00.2 "$WORK/cm/..data_tmp"
	mv -T "$WORK/cm/..data_tmp" "$WORK/cm/..data"
	rm -rf "$WORK/cm/..2026_12_01_00_00_00.1"
	wait_log '"mode":"delta"' 1
	[[ $(table) == *'tcp . 9090 comment "web"'* ]] || fail "9090 not in the table after the swap: $(table)"
	[ -z "$(got 9090)" ] || fail "the squatter on 9090 was served after the edit"
	[ "$(got 8080)" = "hello from owner" ] || fail "the owner lost 8080 after the edit"

	$ENGINE stop -t 5 "$NAME" >/dev/null
	echo "image test: PASS: $image served the owner, refused and starved squatters, and followed a ConfigMap swap"
}

case ${1:-} in
build) build ;;
test) test_image ;;
*) echo "usage: $0 build|test" >&2; exit 2 ;;
esac
