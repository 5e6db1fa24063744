// Package engine runs portfw's pipeline for the CLI and the daemon alike:
// load (parse and resolve a policy file), prepare (read this namespace's
// sysctls, plan them, compile) and sync (make the kernel match, in one
// transaction, with the sysctls in the safe order).
//
// Load and the compiler are pure apart from the user database; Prepare is
// the only step that reads sysctls; Sync is the only one that writes.
package engine

import (
	"fmt"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
)

// Prepared is a resolved policy made ready for this namespace: its sysctl
// plan and the ruleset, which holds the plan's guard entries.
type Prepared struct {
	Path     string
	Policy   *policy.Policy
	Resolved *policy.Resolved
	Ruleset  *compiler.Ruleset

	Plan      tune.Plan
	State     tune.State
	StatePath string
	// HostErr is set when the sysctls or the state file could not be read:
	// the ruleset then has no guard and Sync refuses to run.
	HostErr error
}

// Load parses, validates and resolves a policy file. Policy problems come
// back as policy.Errors.
func Load(path string, r policy.Resolver) (*policy.Resolved, *policy.Policy, error) {
	return policy.Load(path, r)
}

// Prepare plans the sysctls of the calling process's network namespace
// for a resolved policy and compiles it. It does not modify res.
func Prepare(path string, pol *policy.Policy, res *policy.Resolved) *Prepared {
	r := *res
	p := &Prepared{Path: path, Policy: pol, Resolved: &r}
	p.Plan, p.State, p.StatePath, p.HostErr = planHost(&r)
	if p.HostErr == nil {
		r.Guard = p.Plan.Guard
	}
	p.Ruleset = compiler.Compile(&r)
	return p
}

func planHost(res *policy.Resolved) (tune.Plan, tune.State, string, error) {
	h, err := tune.ReadHost()
	if err != nil {
		return tune.Plan{}, tune.State{}, "", err
	}
	st, path, err := tune.LoadState()
	if err != nil {
		return tune.Plan{}, st, path, err
	}
	p, err := tune.Compute(res, h, st)
	return p, st, path, err
}

// Mode says how Sync changed the table.
type Mode string

const (
	ModeNone    Mode = "none"    // already in sync
	ModeDelta   Mode = "delta"   // set elements added and deleted; rules and other counters untouched
	ModeReplace Mode = "replace" // the whole table replaced in one transaction
)

// Result is what Sync did (or, dry, would do).
type Result struct {
	Changes compiler.Changes
	Sysctls []string // "name: old -> new"
	Mode    Mode
}

// InSync reports whether nothing needed to change.
func (r Result) InSync() bool { return r.Changes.InSync() && len(r.Sysctls) == 0 }

// Sync makes the kernel enforce p: a change that only adds or removes
// elements goes in as one element transaction, anything else replaces the
// table in one transaction; the sysctls change around it in the order
// that keeps every low port guarded. With dry set nothing is changed.
func Sync(k nft.Kernel, p *Prepared, dry bool) (Result, error) {
	if p.HostErr != nil {
		return Result{}, fmt.Errorf("read sysctls: %w", p.HostErr)
	}
	cur, err := nft.ReadOrNil(k, p.Ruleset.Table)
	if err != nil {
		return Result{}, err
	}
	res := Result{Changes: compiler.Diff(cur, p.Ruleset), Sysctls: p.Plan.Changes(), Mode: ModeNone}
	if dry || res.InSync() {
		return res, nil
	}
	_, err = tune.Apply(p.Plan, p.State, p.StatePath, p.Ruleset.Table, func() error {
		if res.Changes.InSync() {
			return nil
		}
		if d, ok := compiler.ElementDelta(cur, p.Ruleset); ok {
			res.Mode = ModeDelta
			return k.ApplyDelta(d)
		}
		res.Mode = ModeReplace
		return k.Apply(p.Ruleset)
	})
	return res, err
}

// Remove restores the sysctls portfw changed in this namespace and deletes
// the table, threshold first. It reports whether there was a table.
func Remove(k nft.Kernel, table string) (bool, tune.State, error) {
	st, statePath, err := tune.LoadState()
	if err != nil {
		return false, st, err
	}
	found := false
	err = tune.Remove(st, statePath, func() error {
		var err error
		found, err = k.Remove(table)
		return err
	})
	return found, st, err
}
