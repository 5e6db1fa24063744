# portfw — ports that belong to users.
# Run `make` for the list of targets. Targets that install packages or touch
# the kernel need root (they run in throwaway network namespaces).

GO        ?= go
BIN       := bin/portfw
VERSION   := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
FUZZTIME  ?= 15s
# Debian packages the tests, the demo and the benchmarks use: nft is the
# oracle of what the kernel holds, ip/nsenter build the namespaces,
# useradd makes the test users, strace counts the netlink bytes an in-sync
# apply reads, groff renders the man pages, zsh checks its completion,
# systemd-analyze verifies the unit. (bench/run.sh installs sockperf itself.)
DEB_PKGS  := nftables iproute2 util-linux passwd strace groff-base zsh systemd

.DEFAULT_GOAL := help

.PHONY: help build test demo bench lint deps fuzz clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/portfw
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/portfw

deps: ## install the Debian packages the tests and demo need (root)
	@missing=""; for c in nft ip nsenter useradd strace groff zsh systemd-analyze; do command -v $$c >/dev/null || missing=1; done; \
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

clean: ## remove build output
	rm -rf bin
