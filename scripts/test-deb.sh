#!/usr/bin/env bash
# Install the package built by `make deb`, check what it put in place,
# remove it (only the conffile stays, as Debian policy wants) and purge it:
# then nothing it installed or made is left. Run as root: `make test-packages`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test-deb: run as root (it installs a package)" >&2; exit 2; }
deb=$(ls -t build/portfw_*.deb | head -1)
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
if dpkg -s portfw >/dev/null 2>&1; then fail "portfw is installed already; this test installs and removes it"; fi

# What the file system holds where a package may write, before and after.
snapshot() {
	find /usr /etc /lib /run /var/lib -xdev \
		-path /var/lib/dpkg -prune -o -path /var/lib/apt -prune -o -path /var/cache -prune -o \
		-path /run/netns -prune -o -path /var/lib/containers -prune -o -path /run/containers -prune -o \
		-path /run/libpod -prune -o \
		-path /var/lib/man-db -prune -o -path /etc/ld.so.cache -prune -o \
		-path /run/systemd/systemd-units-load -prune -o -print 2>/dev/null | sort
}
before=$(mktemp); after=$(mktemp); trap 'rm -f "$before" "$after"' EXIT
snapshot > "$before"

echo "test-deb: dpkg -i $deb"
dpkg -i "$deb" >/dev/null
for f in /usr/sbin/portfw /lib/systemd/system/portfw.service /usr/share/man/man8/portfw.8.gz \
	/usr/share/man/man5/portfw-policy.5.gz /usr/share/bash-completion/completions/portfw \
	/usr/share/zsh/vendor-completions/_portfw /usr/share/doc/portfw/copyright /usr/share/doc/portfw/README.md \
	/etc/portfw/policy.yaml; do
	[ -e "$f" ] || fail "$f not installed"
done
grep -qx /etc/portfw/policy.yaml /var/lib/dpkg/info/portfw.conffiles || fail "policy.yaml is not a conffile"
[[ $(/usr/sbin/portfw version) == "portfw "* ]] || fail "portfw version"
# The shipped policy is valid and enforces nothing.
out=$(/usr/sbin/portfw check) || fail "the shipped policy: $out"
[[ $out == *"valid: 0 reservations"* ]] || fail "the shipped policy: $out"
# man finds the pages; the unit verifies (documentation paths included).
man -w portfw >/dev/null && man -w 5 portfw-policy >/dev/null || fail "man cannot find the pages"
if command -v systemd-analyze >/dev/null; then
	out=$(systemd-analyze verify /lib/systemd/system/portfw.service 2>&1) || fail "systemd-analyze verify: $out"
	[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
fi

# Enabled on install, though no systemd runs here (as in an image build).
wants=/etc/systemd/system/multi-user.target.wants/portfw.service
[ -L "$wants" ] || fail "the unit was not enabled on first install"
# An upgrade (here, a reinstall) keeps the admin's disable.
systemctl disable --quiet portfw.service
dpkg -i "$deb" >/dev/null
[ -L "$wants" ] && fail "the upgrade re-enabled a unit the admin disabled"
systemctl enable --quiet portfw.service
dpkg -i "$deb" >/dev/null
[ -L "$wants" ] || fail "the upgrade disabled an enabled unit"

echo "test-deb: dpkg -r portfw"
dpkg -r portfw >/dev/null
[ -e /usr/sbin/portfw ] && fail "the binary survived dpkg -r"
[ -e /etc/portfw/policy.yaml ] || fail "dpkg -r removed the conffile (only purge may)"
snapshot > "$after"
# What Debian keeps after a remove: the conffile and the unit's
# enablement state (symlinks and deb-systemd-helper's records), for purge.
left=$(comm -13 "$before" "$after" | grep -v -e '^/etc/systemd/system' -e '^/var/lib/systemd/deb-systemd-helper-' || true)
[ "$left" = "$(printf '/etc/portfw\n/etc/portfw/policy.yaml')" ] || fail "after dpkg -r, besides the conffile: $left"

echo "test-deb: dpkg -P portfw"
dpkg -P portfw >/dev/null
snapshot > "$after"
left=$(comm -3 "$before" "$after")
[ -z "$left" ] || fail "after dpkg -P, left behind or removed: $left"
dpkg -s portfw >/dev/null 2>&1 && fail "dpkg still knows portfw"
echo "test-deb: PASS: installed, checked, removed and purged; nothing left behind"
