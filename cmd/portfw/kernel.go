package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
)

// openKernel connects to nftables in this process's network namespace.
var openKernel = func() (nft.Kernel, error) { return nft.Open(-1) }

func (a *app) kernelError(what string, err error) int {
	msg := err.Error()
	if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
		msg += " (portfw needs root or CAP_NET_ADMIN)"
	}
	fmt.Fprintf(a.stderr, "portfw %s: %s\n", what, msg)
	return exitNo
}

type changesJSON struct {
	Table        string   `json:"table"`
	Policy       string   `json:"policy"`
	InSync       bool     `json:"in_sync"`
	Applied      bool     `json:"applied"`
	Added        []string `json:"added"`
	Removed      []string `json:"removed"`
	Changed      []string `json:"changed"`
	RulesChanged bool     `json:"rules_changed"`
	Warnings     []string `json:"warnings"`
}

func newChangesJSON(l *engine.Prepared, c compiler.Changes, applied bool, ws []string) changesJSON {
	return changesJSON{
		Table: l.Ruleset.Table, Policy: l.Path, InSync: c.InSync(), Applied: applied,
		Added: nonNil(c.Added), Removed: nonNil(c.Removed), Changed: nonNil(c.Changed),
		RulesChanged: c.RulesChanged, Warnings: nonNil(ws),
	}
}

func (a *app) printChanges(c compiler.Changes) {
	for _, n := range c.Added {
		fmt.Fprintf(a.stdout, "  + %s\n", n)
	}
	for _, n := range c.Removed {
		fmt.Fprintf(a.stdout, "  - %s\n", n)
	}
	for _, n := range c.Changed {
		fmt.Fprintf(a.stdout, "  ~ %s\n", n)
	}
	if c.RulesChanged {
		fmt.Fprintf(a.stdout, "  ~ rules (settings or the kinds of reservation in use)\n")
	}
}

func summary(c compiler.Changes) string {
	return fmt.Sprintf("%d added, %d removed, %d changed", len(c.Added), len(c.Removed), len(c.Changed))
}

func runApply(a *app, args []string) int {
	fs := a.flags("apply")
	path := fileFlag(fs)
	dryRun := fs.Bool("dry-run", false, "show what would change without changing anything")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	insecure := fs.Bool("insecure-policy-perms", false, "accept a policy file writable by users other than root")
	bg := addBindGuardFlags(fs)
	if code, done := a.parse(fs, args); done {
		return code
	}
	if !*insecure {
		if err := policy.CheckPerms(*path); err != nil {
			fmt.Fprintf(a.stderr, "portfw apply: %v\n", err)
			return exitNo
		}
	}
	l, code := a.load(*path)
	if l == nil {
		return code
	}
	l.BindGuardCgroup = *bg.cgroup
	ws := warnings(l.Resolved)
	if l.BindGuardNote != "" {
		ws = append(ws, l.BindGuardNote)
	}
	if !*asJSON {
		a.printWarnings(ws)
	}
	k, err := openKernel()
	if err != nil {
		return a.kernelError("apply", err)
	}
	if l.BindGuardErr != nil {
		fmt.Fprintf(a.stderr, "portfw apply: %v; nothing was changed (bind_guard: auto runs without it)\n", l.BindGuardErr)
		return exitNo
	}
	res, err := engine.Sync(k, l, *dryRun)
	if err != nil {
		return a.kernelError("apply", err)
	}
	c := res.Changes
	if *asJSON {
		g, _ := a.bindGuardStatus(l.Resolved.Settings.BindGuard.String())
		writeJSON(a.stdout, struct {
			changesJSON
			Mode      engine.Mode    `json:"mode"`
			Sysctls   []string       `json:"sysctls"`
			BindGuard *bindGuardJSON `json:"bind_guard,omitempty"`
		}{newChangesJSON(l, c, !*dryRun && !res.InSync(), ws), res.Mode, nonNil(res.Sysctls), g})
		return exitOK
	}
	switch {
	case res.InSync():
		fmt.Fprintf(a.stdout, "table inet %s already enforces %s (%d reservations); nothing to do\n", l.Ruleset.Table, l.Path, len(l.Resolved.Reservations))
	case *dryRun:
		fmt.Fprintf(a.stdout, "dry run: applying %s to table inet %s would change: %s\n", l.Path, l.Ruleset.Table, summary(c))
		a.printChanges(c)
	default:
		fmt.Fprintf(a.stdout, "applied %s to table inet %s: %d reservations (%s)\n", l.Path, l.Ruleset.Table, len(l.Resolved.Reservations), summary(c))
		a.printChanges(c)
	}
	for _, n := range res.Sysctls {
		fmt.Fprintf(a.stdout, "  sysctl %s\n", n)
	}
	if g := guardText(l.Plan.Guard); g != "" {
		fmt.Fprintf(a.stdout, "  guard: %s reserved for root (opened by %s=%d)\n", g, tune.UnprivPortStart, l.Plan.Threshold)
	}
	if res.BindGuard {
		if g, err := a.bindGuardStatus(l.Resolved.Settings.BindGuard.String()); err == nil {
			fmt.Fprintf(a.stdout, "  bind guard: %s\n", describeBindGuard(g))
		}
	}
	return exitOK
}

func runDiff(a *app, args []string) int {
	fs := a.flags("diff")
	path := fileFlag(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if code, done := a.parse(fs, args); done {
		return code
	}
	l, _ := a.load(*path)
	if l == nil {
		return exitUsage // no comparison can be made
	}
	k, err := openKernel()
	if err != nil {
		a.kernelError("diff", err)
		return exitUsage
	}
	cur, err := nft.ReadOrNil(k, l.Ruleset.Table)
	if err != nil {
		a.kernelError("diff", err)
		return exitUsage
	}
	c := compiler.Diff(cur, l.Ruleset)
	if *asJSON {
		writeJSON(a.stdout, newChangesJSON(l, c, false, nil))
	} else if c.InSync() {
		fmt.Fprintf(a.stdout, "in sync: table inet %s enforces %s\n", l.Ruleset.Table, l.Path)
	} else {
		if cur == nil {
			fmt.Fprintf(a.stdout, "table inet %s is not installed; apply would add: %s\n", l.Ruleset.Table, summary(c))
		} else {
			fmt.Fprintf(a.stdout, "table inet %s differs from %s: %s\n", l.Ruleset.Table, l.Path, summary(c))
		}
		a.printChanges(c)
	}
	if c.InSync() {
		return exitOK
	}
	return exitNo
}

// tableFor picks the table a command works on: --table if given, else
// the policy's when -f was given or the default policy file exists, else
// the one portfw's state for this namespace names, else the default.
func (a *app) tableFor(fs *flag.FlagSet, path, table string) (string, *engine.Prepared, int) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["table"] {
		return table, nil, exitOK
	}
	if set["f"] || set["file"] {
		l, code := a.load(path)
		if l == nil {
			return "", nil, code
		}
		return l.Ruleset.Table, l, exitOK
	}
	if _, err := os.Stat(path); err == nil {
		if l, _ := a.load(path); l != nil {
			return l.Ruleset.Table, l, exitOK
		}
	}
	if st, _, err := tune.LoadState(); err == nil && st.Table != "" {
		return st.Table, nil, exitOK
	}
	return table, nil, exitOK
}

func runRemove(a *app, args []string) int {
	fs := a.flags("remove")
	path := fileFlag(fs)
	table := fs.String("table", "portfw", "table `name` to remove (default: the policy's)")
	if code, done := a.parse(fs, args); done {
		return code
	}
	name, _, code := a.tableFor(fs, *path, *table)
	if name == "" {
		return code
	}
	k, err := openKernel()
	if err != nil {
		return a.kernelError("remove", err)
	}
	// The threshold goes back up before the table (and its guard) goes.
	found, st, err := engine.Remove(k, name)
	if err != nil {
		return a.kernelError("remove", err)
	}
	if found {
		fmt.Fprintf(a.stdout, "removed table inet %s\n", name)
	} else {
		fmt.Fprintf(a.stdout, "table inet %s is not installed; nothing to remove\n", name)
	}
	if st.UnprivPortStartOriginal != nil {
		fmt.Fprintf(a.stdout, "  sysctl %s restored to %d\n", tune.UnprivPortStart, *st.UnprivPortStartOriginal)
	}
	if len(st.ReservedPortsAdded) > 0 {
		fmt.Fprintf(a.stdout, "  sysctl %s: removed %s\n", tune.ReservedPorts, tune.FormatPorts(st.ReservedPortsAdded))
	}
	return exitOK
}

type statusJSON struct {
	Table        string             `json:"table"`
	Installed    bool               `json:"installed"`
	Policy       string             `json:"policy,omitempty"`
	InSync       *bool              `json:"in_sync,omitempty"`
	Reservations []compiler.Summary `json:"reservations"`
	Guard        *compiler.Summary  `json:"guard,omitempty"`
	Sysctls      *sysctlsJSON       `json:"sysctls,omitempty"`
	BindGuard    *bindGuardJSON     `json:"bind_guard,omitempty"`
	Changes      *compiler.Changes  `json:"changes,omitempty"`
}

// sysctlsJSON is the state of the sysctls portfw manages in this namespace.
type sysctlsJSON struct {
	UnprivPortStart         int    `json:"ip_unprivileged_port_start"`
	UnprivPortStartOriginal *int   `json:"ip_unprivileged_port_start_original"` // null: portfw has not changed it
	LocalPortRange          string `json:"ip_local_port_range"`
	ReservedPorts           string `json:"ip_local_reserved_ports"`
	ReservedPortsAdded      string `json:"ip_local_reserved_ports_added"` // by portfw
}

func readSysctls() *sysctlsJSON {
	h, err := tune.ReadHost()
	if err != nil {
		return nil
	}
	st, _, _ := tune.LoadState()
	return &sysctlsJSON{
		UnprivPortStart: h.UnprivPortStart, UnprivPortStartOriginal: st.UnprivPortStartOriginal,
		LocalPortRange: h.LocalPortRange.String(), ReservedPorts: tune.FormatPorts(h.ReservedPorts),
		ReservedPortsAdded: tune.FormatPorts(st.ReservedPortsAdded),
	}
}

func runStatus(a *app, args []string) int {
	fs := a.flags("status")
	path := fileFlag(fs)
	table := fs.String("table", "portfw", "table `name` (default: the policy's)")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if code, done := a.parse(fs, args); done {
		return code
	}
	name, l, code := a.tableFor(fs, *path, *table)
	if name == "" {
		return code
	}
	k, err := openKernel()
	if err != nil {
		return a.kernelError("status", err)
	}
	cur, err := nft.ReadOrNil(k, name)
	if err != nil {
		return a.kernelError("status", err)
	}
	st := statusJSON{Table: name, Installed: cur != nil, Reservations: []compiler.Summary{}, Sysctls: readSysctls()}
	if cur != nil {
		for _, r := range compiler.Summarize(cur) {
			if r.Name == policy.GuardName {
				st.Guard = &r
				continue
			}
			st.Reservations = append(st.Reservations, r)
		}
	}
	mode := ""
	if l != nil {
		mode = l.Resolved.Settings.BindGuard.String()
	}
	if g, err := a.bindGuardStatus(mode); err == nil {
		st.BindGuard = g
	}
	if l != nil {
		c := compiler.Diff(cur, l.Ruleset)
		in := c.InSync()
		st.Policy, st.InSync = l.Path, &in
		if !in {
			st.Changes = &c
		}
	}
	if *asJSON {
		writeJSON(a.stdout, st)
		return exitOK
	}
	a.printStatus(st)
	return exitOK
}

func (a *app) printStatus(st statusJSON) {
	w := a.stdout
	if !st.Installed {
		fmt.Fprintf(w, "table inet %s: not installed\n", st.Table)
	} else {
		sync := ""
		if st.InSync != nil {
			if *st.InSync {
				sync = ", in sync with " + st.Policy
			} else {
				sync = ", NOT in sync with " + st.Policy + " (see portfw diff)"
			}
		}
		fmt.Fprintf(w, "table inet %s: installed, %d reservations%s\n", st.Table, len(st.Reservations), sync)
	}
	if s := st.Sysctls; s != nil {
		was := "not changed by portfw"
		if s.UnprivPortStartOriginal != nil {
			was = fmt.Sprintf("lowered by portfw from %d", *s.UnprivPortStartOriginal)
		}
		fmt.Fprintf(w, "%s = %d (%s)\n", tune.UnprivPortStart, s.UnprivPortStart, was)
		if s.ReservedPortsAdded != "" {
			fmt.Fprintf(w, "%s = %q (portfw added %s)\n", tune.ReservedPorts, s.ReservedPorts, s.ReservedPortsAdded)
		}
	}
	if g := st.Guard; g != nil {
		fmt.Fprintf(w, "guard: %s reserved for root; %d packets, %d bytes dropped\n", strings.Join(g.Ports, ","), g.DroppedPackets, g.DroppedBytes)
	}
	if st.BindGuard != nil {
		a.printBindGuardStatus(st.BindGuard)
	}
	if len(st.Reservations) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%-16s %-28s %-20s %s\n", "RESERVATION", "PORTS", "OWNERS", "DROPPED")
	for _, r := range st.Reservations {
		owners := append(prefixAll("uid ", r.UIDs), prefixAll("gid ", r.GIDs)...)
		fmt.Fprintf(w, "%-16s %-28s %-20s %d packets, %d bytes\n", r.Name, clip(strings.Join(r.Ports, ","), 28),
			clip(strings.Join(owners, ","), 20), r.DroppedPackets, r.DroppedBytes)
	}
}

func prefixAll(p string, xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = p + x
	}
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
