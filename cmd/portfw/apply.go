package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/parallel"
	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/resolve"
)

// lockWait is how long a one-shot command waits for the namespace's lock.
const lockWait = 10 * time.Second

type applyJSON struct {
	changesJSON
	Mode      engine.Mode        `json:"mode"`
	ReadTable bool               `json:"read_table"`
	OldTable  string             `json:"old_table_removed,omitempty"`
	Sysctls   []string           `json:"sysctls"`
	Guard     engine.GuardChange `json:"bind_guard_change"`
	BindGuard *bindGuardJSON     `json:"bind_guard,omitempty"`
	Layers    layersJSON         `json:"layers"`
	Squatters []squatterJSON     `json:"squatters"`
	Error     string             `json:"error,omitempty"`
}

func runApply(a *app, args []string) int {
	fs := a.flags("apply")
	path := fileFlag(fs)
	dryRun := fs.Bool("dry-run", false, "show what would change without changing anything")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	insecure := insecureFlag(fs)
	o := a.hostFlags(fs, lockWait)
	if code, done := a.parse(fs, args); done {
		return code
	}
	e, err := a.host(*o)
	if err != nil {
		a.printError("apply", *path, err)
		return exitUsage
	}
	// The next apply of a change starts from this one's record, not from a
	// read of the table (engine.KeepSnapshot).
	e.KeepSnapshot = true
	if !*dryRun {
		unlock, err := e.Lock()
		if err != nil {
			a.printError("apply", *path, err)
			return exitNo
		}
		defer unlock()
	}
	// The file as read now identifies the inputs; when the last sync had
	// the same ones and nothing changed since, there is nothing to do and
	// nothing to parse (a config-management run every half hour).
	inputs, err := a.inputs(*path, *insecure, *o)
	if err == nil && !*dryRun {
		if sum, ok := e.Unchanged(inputs); ok {
			return a.printUnchanged(e, *path, sum, *asJSON)
		}
	}
	if e.Host.Guard != nil {
		// Whether the guard can run here (a probe that loads both
		// programs, ~10 ms) is found out while the policy is parsed.
		go e.Host.Guard.Supported()
	}
	l, err := a.load(*path, *insecure)
	if err != nil {
		a.printError("apply", *path, err)
		return exitNo
	}
	p, err := e.Prepare(l.path, l.policy, l.resolved)
	if err != nil {
		fmt.Fprintf(a.stderr, "portfw apply: %s: %v; nothing was changed\n", *path, err)
		return exitNo
	}
	p.Inputs = inputs
	p.ShowsPlan = true // printed, as text or in the JSON
	if s, ok := a.resolver().(*resolve.System); ok && s.UsedNSS() {
		p.Inputs = "" // names from NSS may change unseen: never skip the parse
	}
	if l.policy.NamesCgroups() {
		p.Inputs = "" // nor may units and cgroups, which come and go
	}
	if !*asJSON {
		a.printWarnings(p.Warnings())
	}
	res, err := e.Sync(p, *dryRun)
	var partial *engine.PartialError
	if err != nil && !errors.As(err, &partial) {
		if *asJSON {
			out := a.applyJSON(e, p, res, false)
			out.Error = err.Error()
			writeJSON(a.stdout, out)
		} else {
			fmt.Fprintf(a.stderr, "portfw apply: %v\n", err)
		}
		return exitNo
	}
	applied := !*dryRun && !res.InSync()
	if *asJSON {
		out := a.applyJSON(e, p, res, applied)
		if err != nil {
			out.Error = err.Error()
		}
		writeJSON(a.stdout, out)
		if err != nil {
			return exitNo
		}
		return exitOK
	}
	c := res.Changes
	// What the guard holds now is read while the plan is printed.
	var guardInfo func() (bindguard.Info, error)
	if res.Guard == engine.GuardUpdated {
		guardInfo = parallel.GoErr(e.Host.Guard.Applied)
	}
	switch {
	case res.InSync():
		fmt.Fprintf(a.stdout, "table inet %s already enforces %s (%d reservations); nothing to do\n", p.Table, planName(p), len(p.Resolved.Reservations))
	case *dryRun:
		fmt.Fprintf(a.stdout, "dry run: applying %s to table inet %s would change: %s\n", planName(p), p.Table, summary(c))
		a.printChanges(c)
	default:
		fmt.Fprintf(a.stdout, "applied %s to table inet %s: %d reservations (%s)\n", planName(p), p.Table, len(p.Resolved.Reservations), summary(c))
		a.printChanges(c)
	}
	if res.OldTable != "" {
		fmt.Fprintf(a.stdout, "  - table inet %s (the policy's table was renamed; removed in the same transaction)\n", res.OldTable)
	}
	for _, n := range res.Sysctls {
		fmt.Fprintf(a.stdout, "  sysctl %s\n", n)
	}
	if g := guardText(p.Sysctls.Guard); g != "" {
		fmt.Fprintf(a.stdout, "  guard: %s reserved for root (opened by %s=%d)\n", g, tune.UnprivPortStart, p.Sysctls.Threshold)
	}
	for _, n := range p.Notes() {
		fmt.Fprintf(a.stdout, "  note: %s\n", n)
	}
	switch res.Guard {
	case engine.GuardUpdated:
		if info, err := guardInfo(); err == nil {
			fmt.Fprintf(a.stdout, "  bind guard: %s\n", describeBindGuard(newBindGuardJSON("", info)))
		}
	case engine.GuardRemoved:
		fmt.Fprintln(a.stdout, "  bind guard: removed (settings.bind_guard is off)")
	}
	fmt.Fprintf(a.stdout, "  layers: %s\n", layersText(planLayers(p)))
	a.printSquatters(res.Squatters)
	a.printWarnings(res.Warnings)
	if err != nil {
		fmt.Fprintf(a.stderr, "portfw apply: %v\n", err)
		return exitNo
	}
	return exitOK
}

// inputs identifies what an apply of path would be computed from: the
// file's bytes, the user database's files, portfw's build and the options
// that change the result. It checks the file's permissions first: an
// unchanged policy that someone else may now change is no longer trusted.
func (a *app) inputs(path string, insecure bool, o hostOptions) (string, error) {
	files, err := a.policyFiles(path, insecure)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "portfw %s compiler %d guard %d\npolicy %s\ncgroup %q insecure %v\n", version, compiler.Version, bindguard.SpecVersion,
		path, o.cgroup, insecure)
	if st, ok := a.resolver().(interface{ Stamp() any }); ok {
		fmt.Fprintf(h, "users %v\n", st.Stamp())
	} else {
		return "", errors.New("the user database cannot say when it changed")
	}
	for _, f := range files {
		data, err := resolve.Read(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "file %q %d\n", f, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// printUnchanged reports an apply that found the last sync's inputs
// unchanged, from what that sync recorded.
func (a *app) printUnchanged(e *engine.Engine, path string, sum state.Summary, asJSON bool) int {
	layers := layersOf(sum.GuardOn, sum.GuardMode, sum.GuardNote, sum.Threshold)
	guard := engine.GuardUnchanged
	if !sum.GuardOn {
		guard = engine.GuardOff
	}
	if asJSON {
		out := applyJSON{changesJSON: changesJSON{Version: outputVersion, Table: sum.Table, Policy: path, InSync: true,
			Added: []string{}, Removed: []string{}, Changed: []string{}, Warnings: nonNil(sum.Warnings), Notes: nonNil(sum.Notes)},
			Mode: engine.ModeNone, Sysctls: []string{}, Guard: guard, Layers: layers, Squatters: []squatterJSON{}}
		if info, err := e.Host.Guard.Status(); err == nil {
			out.BindGuard = newBindGuardJSON(sum.GuardMode.String(), info)
		}
		writeJSON(a.stdout, out)
		return exitOK
	}
	a.printWarnings(sum.Warnings)
	fmt.Fprintf(a.stdout, "table inet %s already enforces %s (%d reservations); nothing to do\n", sum.Table, path, sum.Reservations)
	if g := guardText(sum.RootOnly); g != "" {
		fmt.Fprintf(a.stdout, "  guard: %s reserved for root (opened by %s=%d)\n", g, tune.UnprivPortStart, sum.Threshold)
	}
	for _, n := range sum.Notes {
		fmt.Fprintf(a.stdout, "  note: %s\n", n)
	}
	fmt.Fprintf(a.stdout, "  layers: %s\n", layersText(layers))
	return exitOK
}

func (a *app) applyJSON(e *engine.Engine, p *engine.Plan, res engine.Result, applied bool) applyJSON {
	out := applyJSON{changesJSON: newChangesJSON(p, res.Changes, applied), Mode: res.Mode, ReadTable: res.Read,
		OldTable: res.OldTable, Sysctls: nonNil(res.Sysctls), Guard: res.Guard, Layers: planLayers(p), Squatters: nonNil(res.Squatters)}
	out.InSync = res.InSync()
	out.Warnings = append(out.Warnings, res.Warnings...)
	if info, err := e.Host.Guard.Applied(); err == nil {
		out.BindGuard = newBindGuardJSON(p.Guard.Mode.String(), info)
	}
	return out
}

func runDiff(a *app, args []string) int {
	fs := a.flags("diff")
	path := fileFlag(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	insecure := insecureFlag(fs)
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	l, err := a.load(*path, *insecure)
	if err != nil {
		a.printError("diff", *path, err)
		return exitUsage // no comparison can be made
	}
	e, err := a.host(*o)
	if err != nil {
		a.printError("diff", *path, err)
		return exitUsage
	}
	p, err := e.Prepare(l.path, l.policy, l.resolved)
	if err != nil {
		a.printError("diff", *path, err)
		return exitUsage
	}
	res, err := e.Sync(p, true)
	if err != nil {
		a.printError("diff", *path, err)
		return exitUsage
	}
	c := res.Changes
	if *asJSON {
		out := newChangesJSON(p, c, false)
		out.InSync = res.InSync()
		writeJSON(a.stdout, struct {
			changesJSON
			Sysctls []string           `json:"sysctls"`
			Guard   engine.GuardChange `json:"bind_guard_change"`
		}{out, nonNil(res.Sysctls), res.Guard})
	} else if res.InSync() {
		fmt.Fprintf(a.stdout, "in sync: table inet %s enforces %s\n", p.Table, planName(p))
	} else {
		fmt.Fprintf(a.stdout, "table inet %s differs from %s: %s\n", p.Table, planName(p), summary(c))
		a.printChanges(c)
		for _, n := range res.Sysctls {
			fmt.Fprintf(a.stdout, "  sysctl %s\n", n)
		}
		if res.Guard == engine.GuardUpdated || res.Guard == engine.GuardRemoved {
			fmt.Fprintf(a.stdout, "  bind guard: would be %s\n", res.Guard)
		}
	}
	if res.InSync() {
		return exitOK
	}
	return exitNo
}
