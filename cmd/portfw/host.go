package main

import (
	"fmt"
	"time"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/netns"
	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/nft"
)

// Environment variables portfw reads. Both default to what a host wants;
// tests and containers point them elsewhere.
const (
	// envStateDir is the directory of the state and lock files
	// (default /run/portfw).
	envStateDir = "PORTFW_STATE_DIR"
	// envGuardCgroup is the default of --bind-guard-cgroup.
	envGuardCgroup = "PORTFW_BIND_GUARD_CGROUP"
)

// hostOptions choose the parts of the host a command works on.
type hostOptions struct {
	cgroup   string        // the bind guard's cgroup, relative to the hierarchy's root
	lockWait time.Duration // how long to wait for the namespace's lock
}

// realHost builds the engine on this process's network namespace.
func (a *app) realHost(o hostOptions) (*engine.Engine, error) {
	cookie, err := netns.Cookie()
	if err != nil {
		return nil, err
	}
	k, err := nft.Open(-1)
	if err != nil {
		return nil, err
	}
	dir := state.Dir{Dir: a.getenv(envStateDir), Cookie: cookie}
	if dir.Dir == "" {
		dir.Dir = state.DefaultDir
	}
	var guard engine.Guard
	if g, err := bindguard.ForNamespace(o.cgroup); err == nil {
		guard = g
	} else {
		guard = &bindguard.Fake{Unsupported: fmt.Errorf("%w: %w", bindguard.ErrNotSupported, err)}
	}
	return &engine.Engine{
		Host: engine.Host{
			Tables: k, Sysctls: sysctl.Proc{}, State: dir, Lock: dir, Guard: guard, Sockets: audit.Sockets, Cgroups: audit.ReadCgroups, Snapshots: dir,
		},
		LockWait: o.lockWait,
	}, nil
}
