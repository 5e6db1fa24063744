package main

import (
	"flag"
	"fmt"

	"github.com/portfw/portfw/bindguard"
)

// The bind guard's flags and status. The nftables table is always applied;
// the guard is an extra layer that settings.bind_guard turns on (see
// docs/layers.md). engine.Sync and engine.Remove install, update and remove
// it in the order that keeps every step at least as strict as the policy.

// bindGuardSupported is bindguard.Supported; tests replace it.
var bindGuardSupported = bindguard.Supported

// bindGuardFlags are apply's flags for the guard.
type bindGuardFlags struct {
	cgroup *string
}

func addBindGuardFlags(fs *flag.FlagSet) bindGuardFlags {
	return bindGuardFlags{cgroup: fs.String("bind-guard-cgroup", "",
		"with bind_guard on, guard only processes in this cgroup v2 `dir`ectory and below (default: the whole cgroup v2 hierarchy)")}
}

// bindGuardJSON is the guard's part of apply's and status's JSON.
type bindGuardJSON struct {
	Mode      string `json:"mode,omitempty"` // settings.bind_guard, when a policy was read
	Installed bool   `json:"installed"`
	Cgroup    string `json:"cgroup,omitempty"`
	Ports     int    `json:"ports"`  // guarded (protocol, port) pairs
	Scopes    int    `json:"scopes"` // address-scoped entries
	PinDir    string `json:"pin_dir,omitempty"`
	// Note says why bind_guard: auto left the guard off.
	Note string `json:"note,omitempty"`
}

// bindGuardStatus reads this namespace's guard for status. mode is the
// policy's setting, "" when no policy was read.
func (a *app) bindGuardStatus(mode string) (*bindGuardJSON, error) {
	if err := bindGuardSupported(); err != nil {
		return &bindGuardJSON{Mode: mode, Note: err.Error()}, nil
	}
	st, err := bindguard.Status()
	if err != nil {
		return nil, err
	}
	return newBindGuardJSON(mode, st), nil
}

// printBindGuardStatus is status's line for the guard. It also says who
// grants reserved low ports, since with the guard on portfw leaves
// ip_unprivileged_port_start alone.
func (a *app) printBindGuardStatus(g *bindGuardJSON) {
	switch {
	case g.Installed:
		fmt.Fprintf(a.stdout, "bind guard: %s; owners bind their reserved low ports through it\n", describeBindGuard(g))
	case g.Note != "":
		fmt.Fprintf(a.stdout, "bind guard: not available: %s\n", g.Note)
	default:
		fmt.Fprintln(a.stdout, "bind guard: not installed")
	}
}

func newBindGuardJSON(mode string, st bindguard.Info) *bindGuardJSON {
	return &bindGuardJSON{Mode: mode, Installed: st.Installed, Cgroup: st.Cgroup, Ports: st.Ports, Scopes: st.Scopes, PinDir: st.PinDir}
}

func describeBindGuard(g *bindGuardJSON) string {
	cg := g.Cgroup
	if cg == "" {
		cg = "a cgroup outside this host's cgroup v2 mount"
	}
	s := fmt.Sprintf("on for %s, %d guarded ports", cg, g.Ports)
	if g.Scopes > 0 {
		s += fmt.Sprintf(" (%d address scopes)", g.Scopes)
	}
	return s
}
