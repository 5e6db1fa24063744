package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/compiler"
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

// readKernel returns the installed table, or nil when there is none.
func readKernel(k nft.Kernel, table string) (*compiler.Ruleset, error) {
	cur, err := k.Read(table)
	if errors.Is(err, nft.ErrNoTable) {
		return nil, nil
	}
	return cur, err
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

func newChangesJSON(l *loaded, c compiler.Changes, applied bool, ws []string) changesJSON {
	return changesJSON{
		Table: l.ruleset.Table, Policy: l.path, InSync: c.InSync(), Applied: applied,
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
	ws := warnings(l.resolved)
	if !*asJSON {
		a.printWarnings(ws)
	}
	k, err := openKernel()
	if err != nil {
		return a.kernelError("apply", err)
	}
	cur, err := readKernel(k, l.ruleset.Table)
	if err != nil {
		return a.kernelError("apply", err)
	}
	c := compiler.Diff(cur, l.ruleset)
	// An identical table is left alone: re-applying would reset its drop
	// counters for nothing.
	applied := false
	if !*dryRun && !c.InSync() {
		if err := k.Apply(l.ruleset); err != nil {
			return a.kernelError("apply", err)
		}
		applied = true
	}
	if *asJSON {
		writeJSON(a.stdout, newChangesJSON(l, c, applied, ws))
		return exitOK
	}
	switch {
	case c.InSync():
		fmt.Fprintf(a.stdout, "table inet %s already enforces %s (%d reservations); nothing to do\n", l.ruleset.Table, l.path, len(l.resolved.Reservations))
	case *dryRun:
		fmt.Fprintf(a.stdout, "dry run: applying %s to table inet %s would change: %s\n", l.path, l.ruleset.Table, summary(c))
		a.printChanges(c)
	default:
		fmt.Fprintf(a.stdout, "applied %s to table inet %s: %d reservations (%s)\n", l.path, l.ruleset.Table, len(l.resolved.Reservations), summary(c))
		a.printChanges(c)
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
	cur, err := readKernel(k, l.ruleset.Table)
	if err != nil {
		a.kernelError("diff", err)
		return exitUsage
	}
	c := compiler.Diff(cur, l.ruleset)
	if *asJSON {
		writeJSON(a.stdout, newChangesJSON(l, c, false, nil))
	} else if c.InSync() {
		fmt.Fprintf(a.stdout, "in sync: table inet %s enforces %s\n", l.ruleset.Table, l.path)
	} else {
		if cur == nil {
			fmt.Fprintf(a.stdout, "table inet %s is not installed; apply would add: %s\n", l.ruleset.Table, summary(c))
		} else {
			fmt.Fprintf(a.stdout, "table inet %s differs from %s: %s\n", l.ruleset.Table, l.path, summary(c))
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
// the default name.
func (a *app) tableFor(fs *flag.FlagSet, path, table string) (string, *loaded, int) {
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
		return l.ruleset.Table, l, exitOK
	}
	if _, err := os.Stat(path); err == nil {
		if l, _ := a.load(path); l != nil {
			return l.ruleset.Table, l, exitOK
		}
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
	found, err := k.Remove(name)
	if err != nil {
		return a.kernelError("remove", err)
	}
	if found {
		fmt.Fprintf(a.stdout, "removed table inet %s\n", name)
	} else {
		fmt.Fprintf(a.stdout, "table inet %s is not installed; nothing to remove\n", name)
	}
	return exitOK
}

type statusJSON struct {
	Table        string             `json:"table"`
	Installed    bool               `json:"installed"`
	Policy       string             `json:"policy,omitempty"`
	InSync       *bool              `json:"in_sync,omitempty"`
	Reservations []compiler.Summary `json:"reservations"`
	Changes      *compiler.Changes  `json:"changes,omitempty"`
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
	cur, err := readKernel(k, name)
	if err != nil {
		return a.kernelError("status", err)
	}
	st := statusJSON{Table: name, Installed: cur != nil, Reservations: []compiler.Summary{}}
	if cur != nil {
		st.Reservations = compiler.Summarize(cur)
	}
	if l != nil {
		c := compiler.Diff(cur, l.ruleset)
		in := c.InSync()
		st.Policy, st.InSync = l.path, &in
		if !in {
			st.Changes = &c
		}
	}
	if *asJSON {
		writeJSON(a.stdout, st)
		return exitOK
	}
	if cur == nil {
		fmt.Fprintf(a.stdout, "table inet %s: not installed\n", name)
		return exitOK
	}
	sync := ""
	if st.InSync != nil {
		if *st.InSync {
			sync = ", in sync with " + st.Policy
		} else {
			sync = ", NOT in sync with " + st.Policy + " (see portfw diff)"
		}
	}
	fmt.Fprintf(a.stdout, "table inet %s: installed, %d reservations%s\n", name, len(st.Reservations), sync)
	if len(st.Reservations) == 0 {
		return exitOK
	}
	fmt.Fprintf(a.stdout, "\n%-16s %-28s %-20s %s\n", "RESERVATION", "PORTS", "OWNERS", "DROPPED")
	for _, r := range st.Reservations {
		owners := append(prefixAll("uid ", r.UIDs), prefixAll("gid ", r.GIDs)...)
		fmt.Fprintf(a.stdout, "%-16s %-28s %-20s %d packets, %d bytes\n", r.Name, clip(strings.Join(r.Ports, ","), 28),
			clip(strings.Join(owners, ","), 20), r.DroppedPackets, r.DroppedBytes)
	}
	return exitOK
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
