#!/usr/bin/env bash
# Build build/portfw_VERSION_ARCH.deb with dpkg-deb: the binary at
# /usr/sbin/portfw (with cgo, so names resolve through NSS: LDAP and SSSD
# users too), the unit, man pages, completions, docs, and
# /etc/portfw/policy.yaml as a conffile (no reservations: it enforces
# nothing until edited). `make deb` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's version from git describe: v0.2.0 -> 0.2.0,
# v0.2.0-3-gabc1234 -> 0.2.0+3.gabc1234, a dirty tree adds +dirty.
describe=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
case $describe in
v[0-9]*) version=$(echo "$describe" | sed -E 's/^v//; s/-([0-9]+)-g/+\1.g/; s/-dirty$/+dirty/') ;;
*) version=0.0.0+g$(echo "$describe" | sed -E 's/-dirty$/.dirty/') ;; # no tag
esac
arch=$(dpkg --print-architecture)
stage=build/deb/portfw_${version}_${arch}
rm -rf "$stage"
# Stripped and reproducible (-trimpath); the version is git describe's.
make -s install BIN=build/deb/portfw BUILDFLAGS=-trimpath EXTRA_LDFLAGS="-s -w" DESTDIR="$PWD/$stage" PREFIX=/usr SBINDIR=/usr/sbin UNITDIR=/lib/systemd/system \
	ZSHCOMPDIR=/usr/share/zsh/vendor-completions DOCDIR=/usr/share/doc/portfw >/dev/null

# Debian policy: man pages gzipped, the license as the copyright file.
gzip -9n "$stage"/usr/share/man/man8/portfw.8 "$stage"/usr/share/man/man5/portfw-policy.5
mv "$stage"/usr/share/doc/portfw/LICENSE "$stage"/usr/share/doc/portfw/copyright
# The unit is the package's; the admin overrides it with a drop-in.
mkdir -p "$stage/DEBIAN"
echo /etc/portfw/policy.yaml > "$stage/DEBIAN/conffiles"

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: portfw
Version: $version
Architecture: $arch
Maintainer: portfw developers <portfw@localhost>
Installed-Size: $size
Depends: nftables, libc6
Section: net
Priority: optional
Homepage: https://github.com/portfw/portfw
Description: ports that belong to users
 portfw compiles a YAML policy ("5060/udp belongs to _sipd") into one
 nftables table and an eBPF bind guard: a bind() of a reserved port by
 anyone but its owners fails, and a process of any other uid that holds
 one anyway gets no traffic. Owners bind their own low ports without
 root. portfw watch keeps the kernel equal to the policy.
CONTROL

# The unit's life as dh_installsystemd would write it (deb-systemd-helper
# is in init-system-helpers, which is essential): enabled on first install,
# in a chroot or image build too, where no systemd runs; an admin's
# `systemctl disable` survives upgrades; an upgrade restarts the daemon on
# the new binary (the rules stay in the kernel meanwhile).
cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
case "$1" in
configure|abort-upgrade|abort-deconfigure|abort-remove)
	deb-systemd-helper unmask portfw.service >/dev/null || true
	if deb-systemd-helper --quiet was-enabled portfw.service; then
		deb-systemd-helper enable portfw.service >/dev/null || true
	else
		deb-systemd-helper update-state portfw.service >/dev/null || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		# The shipped policy has no reservations: a first start enforces nothing.
		if [ -n "$2" ]; then action=restart; else action=start; fi
		deb-systemd-invoke $action portfw.service >/dev/null || true
	fi
	;;
esac
SCRIPT
cat > "$stage/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ]; then
	if [ -d /run/systemd/system ]; then
		deb-systemd-invoke stop portfw.service >/dev/null || true
	fi
	# Removing the package removes what it enforced: the table, the bind
	# guard, the sysctl changes (restored), the lock file. An upgrade keeps
	# them.
	/usr/sbin/portfw remove || true
fi
SCRIPT
cat > "$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ]; then
	deb-systemd-helper mask portfw.service >/dev/null || true
fi
if [ "$1" = purge ]; then
	deb-systemd-helper purge portfw.service >/dev/null || true
	deb-systemd-helper unmask portfw.service >/dev/null || true
	rmdir /etc/portfw/policy.d /etc/portfw 2>/dev/null || true
fi
SCRIPT
chmod 0755 "$stage"/DEBIAN/postinst "$stage"/DEBIAN/prerm "$stage"/DEBIAN/postrm
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums)

dpkg-deb --root-owner-group --build "$stage" "build/portfw_${version}_${arch}.deb" >/dev/null
echo "build/portfw_${version}_${arch}.deb"
