# portfw — ports that belong to users.
# Run `make` for the list of targets. Targets that install packages or touch
# the kernel need root (they run in throwaway network namespaces).

GO        ?= go
BIN       := bin/portfw
VERSION   := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION) $(EXTRA_LDFLAGS)
FUZZTIME  ?= 15s
# Debian packages the tests, the demo and the benchmarks use: nft is the
# oracle of what the kernel holds, ip/nsenter build the namespaces,
# useradd makes the test users, strace counts the netlink bytes an in-sync
# apply reads, groff and man render and find the man pages, zsh checks its completion,
# systemd-analyze verifies the unit, dbus-daemon runs the private bus of the
# systemd stand-in (testenv/fakesystemd). (bench/run.sh installs sockperf itself.)
DEB_PKGS  := nftables iproute2 util-linux passwd strace groff-base man-db zsh systemd dbus-daemon

.DEFAULT_GOAL := help

.PHONY: help build static test demo bench lint deps fuzz clean install uninstall man deb image test-packages

# Install layout (make install PREFIX=/usr DESTDIR=/tmp/stage). The unit
# goes where systemd looks for it, whatever the prefix.
PREFIX      ?= /usr/local
SBINDIR     ?= $(PREFIX)/sbin
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/portfw
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
UNITDIR     ?= /etc/systemd/system
SYSCONFDIR  ?= /etc
DESTDIR     ?=

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/portfw
	$(GO) build $(BUILDFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/portfw

static: ## build bin/portfw-static (CGO_ENABLED=0: names from files, for the image)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/portfw-static ./cmd/portfw

man: build ## make the man pages and completions (build/man, build/completion) from the binary
	@mkdir -p build/man build/completion
	$(BIN) man portfw > build/man/portfw.8
	$(BIN) man policy > build/man/portfw-policy.5
	$(BIN) completion bash > build/completion/portfw
	$(BIN) completion zsh > build/completion/_portfw

install: man ## install the binary, unit, man pages, completions, docs and an example policy (PREFIX, DESTDIR)
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/portfw
	install -D -m 0644 build/man/portfw.8 $(DESTDIR)$(MANDIR)/man8/portfw.8
	install -D -m 0644 build/man/portfw-policy.5 $(DESTDIR)$(MANDIR)/man5/portfw-policy.5
	install -D -m 0644 build/completion/portfw $(DESTDIR)$(BASHCOMPDIR)/portfw
	install -D -m 0644 build/completion/_portfw $(DESTDIR)$(ZSHCOMPDIR)/_portfw
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/sbin/portfw|$(SBINDIR)/portfw|' dist/portfw.service > $(DESTDIR)$(UNITDIR)/portfw.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/portfw.service
	install -d -m 0755 $(DESTDIR)$(DOCDIR)/docs $(DESTDIR)$(DOCDIR)/examples
	install -m 0644 README.md LICENSE $(DESTDIR)$(DOCDIR)/
	install -m 0644 docs/*.md $(wildcard docs/*.svg) $(DESTDIR)$(DOCDIR)/docs/
	install -m 0644 examples/policy.yaml $(DESTDIR)$(DOCDIR)/examples/policy.yaml
	install -m 0644 dist/kubernetes/daemonset.yaml $(DESTDIR)$(DOCDIR)/examples/daemonset.yaml
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/portfw/policy.d
	@# An existing policy is the admin's: never overwritten.
	[ -e $(DESTDIR)$(SYSCONFDIR)/portfw/policy.yaml ] || install -m 0644 dist/policy.yaml $(DESTDIR)$(SYSCONFDIR)/portfw/policy.yaml

uninstall: ## remove what install put in place, but the policy in $(SYSCONFDIR)/portfw (PREFIX, DESTDIR)
	rm -f $(DESTDIR)$(SBINDIR)/portfw $(DESTDIR)$(MANDIR)/man8/portfw.8 $(DESTDIR)$(MANDIR)/man5/portfw-policy.5 \
		$(DESTDIR)$(BASHCOMPDIR)/portfw $(DESTDIR)$(ZSHCOMPDIR)/_portfw $(DESTDIR)$(UNITDIR)/portfw.service
	rm -rf $(DESTDIR)$(DOCDIR)
	@# The policy stays (like a removed package's conffile): delete $(SYSCONFDIR)/portfw by hand.
	-rmdir $(DESTDIR)$(SYSCONFDIR)/portfw/policy.d 2>/dev/null

deb: ## build build/portfw_VERSION_ARCH.deb with dpkg-deb
	./scripts/deb.sh

image: static ## build the container image localhost/portfw:VERSION from the Containerfile (podman or docker)
	./scripts/image.sh build

test-packages: deps deb image ## install and remove the .deb, run the image against a namespace (root)
	./scripts/test-deb.sh
	./scripts/image.sh test

deps: ## install the Debian packages the tests and demo need (root)
	@missing=""; for c in nft ip nsenter useradd strace groff man zsh systemd-analyze dbus-daemon; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(DEB_PKGS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS) >/dev/null; \
	fi

test: deps ## run every test (root: network-namespace tests; PORTFW_REQUIRE_NETNS=1 makes them fail instead of skip)
	$(GO) vet ./...
	@# The race detector everywhere but bindguard, whose bind loops it slows
	@# down 15-fold; bindguard runs without it.
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v '/bindguard$$')
	$(GO) test -count=1 ./bindguard
	$(GO) test -count=1 -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./policy
	@# The DaemonSet against the Kubernetes API types: a module of its own,
	@# so k8s.io/api is no dependency of portfw.
	cd dist/kubernetes && $(GO) test -count=1 ./...
	@# portfw's changes to its copy of google/nftables, against upstream's code.
	cd third_party/nftables && $(GO) test -count=1 .

demo: deps build ## apply examples/policy.yaml in a throwaway namespace: owner served, squatter blocked, counters shown (root)
	$(GO) build -o bin/peer ./testenv/peer
	./scripts/demo.sh

bench: deps build ## run the benchmarks and write docs/performance.md (root)
	./bench/run.sh

fuzz: ## fuzz the policy parser for longer (FUZZTIME=5m)
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./policy

lint: ## gofmt, go vet, staticcheck (pinned in tools/go.mod), go mod tidy -diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool -modfile=tools/go.mod staticcheck ./...
	$(GO) mod tidy -diff
	cd tools && $(GO) mod tidy -diff
	cd dist/kubernetes && $(GO) vet ./... && $(GO) mod tidy -diff

clean: ## remove build output
	rm -rf bin build
