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

	"github.com/portfw/portfw/bindguard"
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

	// BindGuard says whether the eBPF bind guard runs (settings.bind_guard
	// and what the kernel supports); BindGuardNote says why auto left it
	// off; BindGuardErr is set when the policy asks for it (on) and the
	// kernel cannot: Sync then refuses before touching anything.
	BindGuard     bool
	BindGuardNote string
	BindGuardErr  error
	// BindGuardCgroup narrows the guard to a cgroup v2 subtree; empty is
	// the whole hierarchy. Set by the caller.
	BindGuardCgroup string
}

// bindGuardSupported is bindguard.Supported; tests replace it.
var bindGuardSupported = bindguard.Supported

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
	p.BindGuard, p.BindGuardNote, p.BindGuardErr = bindguard.Decide(r.Settings.BindGuard, bindGuardSupported)
	p.Plan, p.State, p.StatePath, p.HostErr = planHost(&r, p.BindGuard)
	if p.HostErr == nil {
		r.Guard = p.Plan.Guard
	}
	p.Ruleset = compiler.Compile(&r)
	return p
}

func planHost(res *policy.Resolved, bindGuard bool) (tune.Plan, tune.State, string, error) {
	h, err := tune.ReadHost()
	if err != nil {
		return tune.Plan{}, tune.State{}, "", err
	}
	h.BindGuard = bindGuard
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
	// BindGuard is set when the bind guard was installed or updated.
	BindGuard bool
}

// InSync reports whether nothing needed to change.
func (r Result) InSync() bool { return r.Changes.InSync() && len(r.Sysctls) == 0 }

// Sync makes the kernel enforce p: a change that only adds or removes
// elements goes in as one element transaction, anything else replaces the
// table in one transaction; the sysctls change around it in the order
// that keeps every low port guarded. With dry set nothing is changed.
func Sync(k nft.Kernel, p *Prepared, dry bool) (Result, error) {
	cur, err := nft.ReadOrNil(k, p.Ruleset.Table)
	if err != nil {
		return Result{}, err
	}
	return SyncFrom(k, p, cur, dry)
}

// SyncFrom is Sync with the kernel's table already known: cur is what it
// holds (nil: no table). The daemon uses it for reloads when no other
// process has committed since its own last transaction: reading a 10k
// reservation table back costs ~0.3 s, the change itself a few ms.
func SyncFrom(k nft.Kernel, p *Prepared, cur *compiler.Ruleset, dry bool) (Result, error) {
	if p.HostErr != nil {
		return Result{}, fmt.Errorf("read sysctls: %w", p.HostErr)
	}
	if p.BindGuardErr != nil {
		return Result{}, fmt.Errorf("bind_guard: on: %w", p.BindGuardErr)
	}
	var err error
	changes, delta, deltaOK := compiler.Compare(cur, p.Ruleset)
	res := Result{Changes: changes, Sysctls: p.Plan.Changes(), Mode: ModeNone}
	if dry {
		return res, nil
	}
	// The guard goes on before the table and the sysctls change, so owners
	// keep their low ports while a threshold portfw had lowered goes back
	// up; it refuses binds and grants owners theirs, so it is safe ahead
	// of the table. It is rewritten only when something changed or it is
	// missing (an update at 10k reservations takes ~0.2 s).
	if p.BindGuard {
		if res.BindGuard, err = syncBindGuard(p, !res.InSync()); err != nil {
			return res, err
		}
	}
	if res.InSync() {
		return res, nil
	}
	_, err = tune.Apply(p.Plan, p.State, p.StatePath, p.Ruleset.Table, func() error {
		if res.Changes.InSync() {
			return nil
		}
		if deltaOK {
			res.Mode = ModeDelta
			return k.ApplyDelta(delta)
		}
		res.Mode = ModeReplace
		return k.Apply(p.Ruleset)
	})
	if err != nil {
		return res, err
	}
	// A guard the policy no longer asks for goes once the table and the
	// threshold are in place.
	if !p.BindGuard && bindGuardSupported() == nil {
		if _, err := bindguard.Remove(); err != nil {
			return res, err
		}
	}
	return res, nil
}

func syncBindGuard(p *Prepared, changed bool) (bool, error) {
	if !changed {
		if st, err := bindguard.Status(); err == nil && st.Installed {
			return false, nil
		}
	}
	if err := bindguard.Apply(bindguard.FromResolved(p.Resolved), p.BindGuardCgroup); err != nil {
		return false, fmt.Errorf("apply bind guard: %w", err)
	}
	return true, nil
}

// Remove restores the sysctls portfw changed in this namespace and deletes
// the table, threshold first. It reports whether there was a table.
func Remove(k nft.Kernel, table string) (bool, tune.State, error) {
	st, statePath, err := tune.LoadState()
	if err != nil {
		return false, st, err
	}
	// The guard goes first: remove leaves no layer behind.
	if bindGuardSupported() == nil {
		if _, err := bindguard.Remove(); err != nil {
			return false, st, err
		}
	}
	found := false
	err = tune.Remove(st, statePath, func() error {
		var err error
		found, err = k.Remove(table)
		return err
	})
	return found, st, err
}
