// Package engine carries portfw's pipeline to the host for the CLI and the
// daemon alike: Prepare reads the namespace (sysctls, recorded state, what
// the bind guard can do) and decides everything; Sync makes the kernel
// match, in the order that keeps every reserved and every low port guarded
// at every moment; Remove undoes it.
//
// Every host effect sits behind one small interface in Host (nftables,
// sysctls, the state store and lock, the bind guard, the socket list), each
// with a fake, so the ordering is tested without a kernel and nothing else
// in portfw touches the host.
package engine

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/parallel"
	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
)

// Guard is the bind guard as one network namespace uses it
// (bindguard.Namespace; bindguard.Fake in tests).
type Guard interface {
	// Supported returns nil when the guard can run here, or why not.
	Supported() error
	// Apply makes the guard enforce the policy in the namespace.
	Apply(r *model.Resolved) error
	// Remove takes the namespace's policy out; it reports whether there was one.
	Remove() (bool, error)
	// Status reports the guard and the namespace's part of it.
	Status() (bindguard.Info, error)
	// Applied is Status after this process's Apply, the namespace's
	// entries counted from what it wrote rather than read back.
	Applied() (bindguard.Info, error)
	// Sweep removes the entries of namespaces that no longer exist.
	Sweep() ([]uint64, error)
	// Active reports whether the guard holds a policy for the namespace
	// (its programs attached, its maps there), without reading them.
	Active() (bool, error)
}

var (
	_ Guard = (*bindguard.Namespace)(nil)
	_ Guard = (*bindguard.Fake)(nil)
)

// Host is every effect portfw has on one network namespace.
type Host struct {
	Tables  nft.Kernel
	Sysctls sysctl.Sysctls
	State   state.Store
	Lock    state.Locker
	Guard   Guard
	// Sockets lists the namespace's bound sockets, for reporting squatters
	// that bound a reserved port before the guard could refuse them. Nil
	// reports none.
	Sockets func() ([]audit.Socket, error)
	// Cgroups reads the cgroup tree, for naming the owner cgroups the
	// table holds by id (status). Nil names none.
	Cgroups func() (audit.Cgroups, error)
	// Snapshots keeps the record of the last commit between processes
	// (state.Dir beside the state file). Nil keeps none.
	Snapshots Snapshots
}

// Snapshots stores an Engine's record of its last commit, so that the
// next one-shot apply, a new process, computes its change from it instead
// of reading the table back (see Engine.KeepSnapshot).
type Snapshots interface {
	LoadSnapshot() ([]byte, error)
	SaveSnapshot([]byte) error
}

// Engine runs the pipeline on a Host.
type Engine struct {
	Host Host
	// LockWait bounds how long a one-shot command waits for the namespace's
	// lock; the daemon does not wait.
	LockWait time.Duration

	// KeepSnapshot saves the record of each commit in Host.Snapshots (one-
	// shot applies; the daemon keeps its record in memory). Any Sync that
	// is not a dry run uses a saved record it finds valid: same
	// generation, table and digest as the state, and a policy that hashes
	// to that digest. Anything else reads the table back, as before.
	KeepSnapshot bool

	// last is what this Engine's last commit put in the table. While the
	// ruleset's generation is still that commit's, the table holds exactly
	// that, and the next change is computed from it without reading the
	// table back (the daemon: one Engine, holding the lock for life).
	last *record
}

// loadSnapshot returns the saved record when it describes the table the
// kernel holds now: the state names the same generation, table and digest,
// the generation is the kernel's, and the saved policy hashes to the
// digest. Otherwise nil: the caller reads the table back.
func (e *Engine) loadSnapshot(st state.State, gen uint32, table string) *record {
	if e.Host.Snapshots == nil || st.Gen == 0 || st.Gen != gen || st.Table != table {
		return nil
	}
	b, err := e.Host.Snapshots.LoadSnapshot()
	if err != nil || b == nil {
		return nil
	}
	stable, sdigest, resolved, sgen, err := decodeSnapshot(b)
	if err != nil || sgen != gen || stable != table || sdigest != st.Digest {
		return nil
	}
	if d, _ := digests(resolved); d != sdigest {
		return nil
	}
	return &record{gen: sgen, table: stable, digest: sdigest, resolved: resolved}
}

// pendingSnapshot is a snapshot whose body is being encoded.
type pendingSnapshot struct {
	body func() []byte // waits for the body's encoding
}

// wait waits for the body's encoding; ps may be nil.
func (ps *pendingSnapshot) wait() {
	if ps != nil {
		ps.body()
	}
}

// startSnapshot encodes the body of the snapshot of a commit of resolved
// (of table, hashing to digest) in the background; nil when the Engine
// keeps none.
func (e *Engine) startSnapshot(table, digest string, resolved *model.Resolved) *pendingSnapshot {
	if !e.KeepSnapshot || e.Host.Snapshots == nil {
		return nil
	}
	return &pendingSnapshot{body: parallel.Go(func() []byte { return appendSnapshotBody(nil, table, digest, resolved) })}
}

// finishSnapshot saves ps with the generation of its commit. A failure
// costs the next apply a read of the table, nothing else: an old snapshot
// names an older generation and is not used. ps may be nil.
func (e *Engine) finishSnapshot(ps *pendingSnapshot, gen uint32) {
	if ps == nil {
		return
	}
	e.Host.Snapshots.SaveSnapshot(binary.AppendUvarint(ps.body(), uint64(gen)))
}

// saveSnapshot saves r when the Engine keeps snapshots.
func (e *Engine) saveSnapshot(r *record) {
	e.finishSnapshot(e.startSnapshot(r.table, r.digest, r.resolved), r.gen)
}

type record struct {
	gen      uint32
	table    string
	digest   string
	resolved *model.Resolved
}

// Lock takes the namespace's lock (see state.Locker).
func (e *Engine) Lock() (func(), error) { return e.Host.Lock.Lock(e.LockWait) }

// GuardPlan is what Sync does with the bind guard.
type GuardPlan struct {
	Mode model.BindGuardMode
	On   bool
	// Note says why auto left the guard off.
	Note string
	// Digest identifies what the guard enforces for the policy, recorded
	// in the state.
	Digest string
}

// Plan is everything Sync will do, decided before anything changes.
type Plan struct {
	Path     string
	Policy   *policy.Policy
	Resolved *model.Resolved // with the root-only guard entries
	Table    string          // the nftables table
	// Digest identifies the table the policy compiles to (the resolved
	// policy and compiler.Version), recorded in the state.
	Digest  string
	Sysctls tune.Plan
	Host    tune.Host
	State   state.State
	Guard   GuardPlan

	// Inputs identifies what the plan was made from (see state.State);
	// set by the caller, recorded by Sync. Empty: never taken as unchanged.
	Inputs string

	// Quiet skips what a sync does after its commit besides recording it:
	// sweeping the guard entries of deleted namespaces and listing the
	// squatters that bound before the guard. The daemon's reloads are quiet
	// (its periodic audit does both; on a busy host listing sockets and
	// their processes costs more than the reload).
	Quiet bool
	// ShowsPlan says the caller prints the changes' plan (apply): Sync
	// then works it out beside the kernel's commit. The daemon prints
	// none (at 10k reservations the plan is 50 ms and ~40 MB).
	ShowsPlan bool

	// UnitWarnings are what the host leaves open to owners that are units
	// and cgroups (see unitWarnings).
	UnitWarnings []string

	ruleset *compiler.Ruleset // compiled when first needed
}

// Ruleset is the table the policy compiles to. It is compiled on first use:
// a reload that changes a few reservations never needs the whole of it.
func (p *Plan) Ruleset() *compiler.Ruleset {
	if p.ruleset == nil {
		p.ruleset = compiler.Compile(p.Resolved)
	}
	return p.ruleset
}

// Notes are what Sync decided and why, for the admin to read; Warnings what
// works against the policy. Both are in the order they matter.
func (p *Plan) Notes() []string {
	if usesCgroups(p.Resolved) {
		return append(slices.Clip(p.Sysctls.Notes), "owners that are units and cgroups get a new cgroup id at every restart: `portfw watch` follows them (a one-shot apply holds the ids of now); see docs/units.md")
	}
	return p.Sysctls.Notes
}

// Warnings lists what in the host works against the policy.
func (p *Plan) Warnings() []string {
	var w []string
	if p.Guard.Note != "" {
		w = append(w, p.Guard.Note)
	}
	w = append(w, p.Resolved.Warnings...)
	w = append(w, p.UnitWarnings...)
	return append(w, p.Sysctls.Warnings...)
}

// unitWarnings says what the host leaves open to owners that are units and
// cgroups: found by an attacker's review, each with a real-traffic test
// (units_e2e_test.go) and a section of docs/units.md.
func unitWarnings(r *model.Resolved, guardOn bool, sys sysctl.Sysctls) []string {
	var cgOnly, any []string
	for _, res := range r.Reservations {
		if len(res.Owners.Cgroups) > 0 {
			any = append(any, res.Name)
		}
		if res.Owners.CgroupOnly() {
			cgOnly = append(cgOnly, res.Name)
		}
	}
	if len(any) == 0 {
		return nil
	}
	var w []string
	if v, err := sys.Get("kernel.yama.ptrace_scope"); err != nil || v == "0" {
		w = append(w, fmt.Sprintf("%s: a process of the same uid as a unit that owns ports can take the unit's sockets with ptrace or pidfd_getfd (kernel.yama.ptrace_scope is %s): give each such unit a uid of its own (DynamicUser=yes, User=) or set kernel.yama.ptrace_scope=1",
			listNames(any), cmp.Or(v, "absent")))
	}
	if !guardOn && len(cgOnly) > 0 {
		w = append(w, fmt.Sprintf("%s: without the bind guard a process of a unit's uid in another cgroup can join the unit's SO_REUSEPORT groups and be steered its traffic, and broadcast and multicast datagrams reach anyone bound to the port: use the bind guard (bind_guard: auto)",
			listNames(cgOnly)))
	}
	return w
}

func listNames(names []string) string {
	if len(names) > 3 {
		return strings.Join(names[:3], ", ") + fmt.Sprintf(" and %d more", len(names)-3)
	}
	return strings.Join(names, ", ")
}

// usesCgroups reports whether some owner is a unit or a cgroup.
func usesCgroups(r *model.Resolved) bool {
	for i := range r.Reservations {
		if len(r.Reservations[i].Owners.Cgroups) > 0 {
			return true
		}
	}
	return false
}

// digests identify what a resolved policy compiles to, as the table and as
// the guard: the policy's content (not its positions or descriptions) and
// the version of each encoding. Computed without compiling.
func digests(r *model.Resolved) (table, guard string) {
	ht, hg := sha256.New(), sha256.New()
	fmt.Fprintf(ht, "table %d\n", compiler.Version)
	fmt.Fprintf(hg, "guard %d\n", bindguard.SpecVersion)
	b := make([]byte, 0, 256)
	flush := func() {
		ht.Write(b)
		hg.Write(b)
		b = b[:0]
	}
	st := r.Settings
	b = append(b, st.Table...)
	b = append(b, 0, boolByte(st.AllowRoot), byte(st.Log.Unit))
	b = binary.LittleEndian.AppendUint32(b, uint32(st.Log.Count))
	b = binary.LittleEndian.AppendUint32(b, st.MarkOwned)
	b = binary.LittleEndian.AppendUint32(b, st.MarkSquatted)
	for _, res := range r.All() {
		if len(b) > 192 {
			flush()
		}
		b = append(b, res.Name...)
		b = append(b, 0, byte(len(res.Protocols)))
		for _, p := range res.Protocols {
			b = append(b, byte(p))
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(res.Ports)))
		for _, p := range res.Ports {
			b = binary.LittleEndian.AppendUint16(b, p.Lo)
			b = binary.LittleEndian.AppendUint16(b, p.Hi)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(res.Addresses)))
		for _, a := range res.Addresses {
			b, _ = a.AppendBinary(b)
		}
		b = append(b, boolByte(res.Owners.Root))
		for _, ids := range [][]model.IDRange{res.Owners.UIDs, res.Owners.GIDs} {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(ids)))
			for _, id := range ids {
				b = binary.LittleEndian.AppendUint32(b, id.Lo)
				b = binary.LittleEndian.AppendUint32(b, id.Hi)
			}
		}
		// Cgroups by what the kernel holds: level and id.
		b = binary.LittleEndian.AppendUint32(b, uint32(len(res.Owners.Cgroups)))
		for _, c := range res.Owners.Cgroups {
			b = append(b, c.Level)
			b = binary.LittleEndian.AppendUint64(b, c.ID)
		}
	}
	flush()
	return hex.EncodeToString(ht.Sum(nil)[:16]), hex.EncodeToString(hg.Sum(nil)[:16])
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// Prepare decides what applying res (parsed from pol at path) does in this
// namespace. It reads the sysctls, the state and the guard's support, and
// changes nothing. It fails, before anything could change, for a policy the
// host cannot have safely: bind_guard on where the guard cannot run, a
// threshold it cannot set, a starved ephemeral range, an unreadable state.
func (e *Engine) Prepare(path string, pol *policy.Policy, res *model.Resolved) (*Plan, error) {
	r := *res
	p := &Plan{Path: path, Policy: pol, Resolved: &r}
	var err error
	if p.State, err = e.Host.State.Load(); err != nil {
		if errors.Is(err, state.ErrCorrupt) {
			return nil, fmt.Errorf("%w; `portfw remove` restores the safest values (the threshold back to 1024 or above) and starts over", err)
		}
		return nil, err
	}
	supported := func() error {
		if e.Host.Guard == nil {
			return fmt.Errorf("%w: no guard on this host", bindguard.ErrNotSupported)
		}
		return e.Host.Guard.Supported()
	}
	p.Guard.Mode = r.Settings.BindGuard
	if p.Guard.On, p.Guard.Note, err = bindguard.Decide(r.Settings.BindGuard, supported); err != nil {
		return nil, err
	}
	if p.Host, err = tune.ReadHost(e.Host.Sysctls); err != nil {
		return nil, fmt.Errorf("read this namespace's sysctls: %w", err)
	}
	if p.Sysctls, err = tune.Compute(&r, p.Host, p.State, p.Guard.On); err != nil {
		return nil, err
	}
	r.Guard = p.Sysctls.Guard
	p.UnitWarnings = unitWarnings(&r, p.Guard.On, e.Host.Sysctls)
	p.Table = r.Settings.Table
	var guardDigest string
	p.Digest, guardDigest = digests(&r)
	if p.Guard.On {
		p.Guard.Digest = guardDigest
	}
	return p, nil
}

// Mode says how Sync changed the table.
type Mode string

const (
	ModeNone    Mode = "none"    // already in sync
	ModeDelta   Mode = "delta"   // set elements added and deleted; rules and other counters untouched
	ModeReplace Mode = "replace" // the whole table replaced in one transaction
)

// GuardChange is what Sync did to the bind guard.
type GuardChange string

const (
	GuardUnchanged GuardChange = "unchanged"
	GuardUpdated   GuardChange = "updated"
	GuardRemoved   GuardChange = "removed"
	GuardOff       GuardChange = "off"
)

// Result is what Sync did (or, dry, would do).
type Result struct {
	Changes compiler.Changes
	Mode    Mode
	Sysctls []string // "name: old -> new"
	Guard   GuardChange
	// Read is false when the table was known to be in sync from the
	// generation of portfw's last commit, without reading it.
	Read bool
	// OldTable names a table of an earlier policy (settings.table
	// changed) that the transaction deleted.
	OldTable string
	// Squatters are sockets of non-owners on reserved ports, bound before
	// the guard could refuse them: their traffic is dropped.
	Squatters []audit.Finding
	// Swept counts guard entries of deleted namespaces removed.
	Swept int
	// Warnings are problems of the steps after the commit that did not
	// fail the sync (a sweep that could not tell, a socket list that failed).
	Warnings []string
}

// InSync reports whether nothing needed to change.
func (r Result) InSync() bool {
	return r.Changes.InSync() && len(r.Sysctls) == 0 && r.OldTable == "" && (r.Guard == GuardUnchanged || r.Guard == GuardOff)
}

// PartialError is returned by Sync when the table went in and a later step
// failed: the kernel enforces the new table, and Err says what is missing.
type PartialError struct {
	Done string
	Err  error
}

func (e *PartialError) Error() string { return e.Done + ", but " + e.Err.Error() }
func (e *PartialError) Unwrap() error { return e.Err }

// commitRetries bounds how often Sync re-reads the table when another
// process commits between its read and its commit.
const commitRetries = 5

// Sync makes the kernel enforce p. The caller holds the namespace's lock
// (Lock) from before Prepare. Order, each step only after the one before
// succeeded:
//
//  1. the bind guard, when on: it refuses non-owners and grants owners
//     their low ports, so it is safe ahead of everything;
//  2. the state, with the values portfw is about to change;
//  3. a threshold going up;
//  4. the table, in one transaction (an element delta when only
//     membership changed), committed on the generation it was read at: a
//     change by another process in between makes Sync read again instead
//     of overwriting it; a table of an earlier policy goes in the same
//     transaction;
//  5. a threshold going down, then ip_local_reserved_ports;
//  6. a guard the policy no longer asks for goes;
//  7. the state, with the new generation and digests.
//
// A failure before 4 leaves the previous table; after 4 it is a
// *PartialError: the new table stays (it is at least as strict), and the
// error says what did not happen. With dry set nothing changes.
func (e *Engine) Sync(p *Plan, dry bool) (Result, error) {
	h := e.Host
	st := p.State
	table := p.Table
	res := Result{Mode: ModeNone, Sysctls: p.Sysctls.Changes(), Guard: GuardUnchanged}
	// The squatter listing and the sweep of dead namespaces' guard entries
	// start once the sync's own guard work is through, beside the commit
	// (whose kernel time leaves a CPU idle; the sweep's deletions each
	// wait for an RCU grace period): the guard's Host is not safe for
	// concurrent use, and nothing else here uses it after; and with the
	// guard in, no squatter binds after the listing. (One bound meanwhile
	// is the race one bound just after always was.)
	afterDone := func() {}
	startAfter := func() {}
	if !dry && !p.Quiet {
		var swept, squatters func() Result
		startAfter = func() {
			if swept == nil {
				squatters = parallel.Go(func() (r Result) {
					e.listSquatters(p, &r)
					return r
				})
				swept = parallel.Go(func() (r Result) {
					e.sweep(p, &r)
					return r
				})
			}
		}
		defer func() { // nothing runs past Sync
			if swept != nil {
				swept()
				squatters()
			}
		}()
		afterDone = func() {
			startAfter()
			sw, r := swept(), squatters()
			res.Swept, res.Squatters = sw.Swept, r.Squatters
			res.Warnings = append(res.Warnings, sw.Warnings...)
			res.Warnings = append(res.Warnings, r.Warnings...)
		}
	}

	guardOK, err := e.guardInSync(p)
	if err != nil {
		return res, err
	}
	if !p.Guard.On {
		res.Guard = GuardOff
		if !guardOK {
			res.Guard = GuardRemoved
		}
	} else if !guardOK {
		res.Guard = GuardUpdated
	}
	gen, err := h.Tables.Gen()
	if err != nil {
		return res, err
	}
	if st.Gen != 0 && st.Gen == gen && st.Digest == p.Digest && st.Table == table {
		// Nobody committed since portfw's last commit here, which made
		// exactly this table.
		e.last = &record{gen: gen, table: table, digest: p.Digest, resolved: p.Resolved}
		if !dry && res.InSync() {
			if err := e.recordInputs(p, st); err != nil {
				return res, err
			}
			afterDone()
		}
		if res.InSync() || dry {
			return res, nil
		}
	}
	// 1. The guard, which does not depend on the table: it goes in while
	// the change is worked out (the record of the last commit loaded, a
	// fresh 10k table's compile and comparison), and the table is
	// committed only once it is in.
	guarding := !dry && p.Guard.On && res.Guard == GuardUpdated
	waitGuard := func() error { return nil }
	if guarding {
		waitGuard = parallel.Go(func() error { return h.Guard.Apply(p.Resolved) })
	}
	// Only this Engine has committed since its last commit: the table is
	// what that commit made, and the change needs no read.
	prev := e.last
	if prev == nil && !dry {
		prev = e.loadSnapshot(st, gen, table) // a one-shot apply after another
	}
	known := prev != nil && st.Gen == gen && prev.gen == gen && prev.table == table && st.Table == table &&
		st.Digest == prev.digest
	e.last = nil // set again once this sync is through

	var cur *compiler.Ruleset
	var delta compiler.Delta
	deltaOK := false
	read := func() error {
		var err error
		if gen, err = h.Tables.Gen(); err != nil {
			return err
		}
		if cur, err = nft.ReadOrNil(h.Tables, table); err != nil {
			return err
		}
		res.Read = true
		if cur == nil {
			res.Changes, delta, deltaOK = compiler.Created(p.Resolved, p.Ruleset()), compiler.Delta{}, false
		} else {
			res.Changes, delta, deltaOK = compiler.Compare(cur, p.Ruleset())
		}
		res.OldTable = ""
		if st.Table != "" && st.Table != table {
			old, err := h.Tables.HasTable(st.Table)
			if err != nil {
				return err
			}
			if old {
				res.OldTable = st.Table
			}
		}
		return nil
	}
	if known {
		res.Changes, delta, deltaOK = compiler.Change(prev.resolved, p.Resolved)
	} else if err := read(); err != nil {
		waitGuard()
		return res, err
	}
	if dry || res.InSync() {
		if err := waitGuard(); err != nil {
			return res, fmt.Errorf("install the bind guard: %w; nothing else was changed", err)
		}
		if !dry {
			// In sync, but the state did not know it (first apply of an
			// unchanged table, or another process committed something
			// else): record the generation so the next apply needs no read.
			st.Table, st.Gen, st.Digest = table, gen, p.Digest
			st.Inputs, st.Host, st.Summary = p.Inputs, hostDigest(p.Host), p.summary()
			if err := h.State.Save(st); err != nil {
				return res, err
			}
			e.last = &record{gen: gen, table: table, digest: p.Digest, resolved: p.Resolved}
			e.saveSnapshot(e.last)
			afterDone()
		}
		return res, nil
	}

	// The transaction, encoded while the guard goes in (a fresh 10k
	// table's 80k elements: 20-40 ms).
	buildTx := func() *nft.Tx {
		tx := new(nft.Tx)
		if res.Changes.InSync() {
			// only the old table to delete
		} else if deltaOK {
			res.Mode = ModeDelta
			tx.Delta(delta)
		} else {
			res.Mode = ModeReplace
			tx.Replace(p.Ruleset())
		}
		if res.OldTable != "" {
			tx.Remove(res.OldTable)
		}
		return tx
	}
	tx := buildTx()
	if guarding {
		tx.Encode()
	}
	if err := waitGuard(); err != nil {
		return res, fmt.Errorf("install the bind guard: %w; nothing else was changed", err)
	}
	startAfter()
	// 2. The state, before any sysctl changes: the values found, so that a
	// crash from here on still leaves what to restore. With no sysctl to
	// change there is nothing to record first (a crash after the commit
	// leaves a generation the state does not name: the next sync reads the
	// table back), and the reload saves a write.
	pending := st
	pending.Table = table
	if p.Sysctls.Threshold != p.Sysctls.Original && pending.UnprivPortStartOriginal == nil {
		orig := p.Sysctls.Original
		pending.UnprivPortStartOriginal = &orig
	}
	pending.ReservedPortsAdded = st.ReservedPortsAdded.Union(p.Sysctls.Added)
	pending.Gen, pending.Digest = 0, ""
	if p.Guard.On {
		pending.GuardDigest = p.Guard.Digest
	}
	if len(p.Sysctls.Changes()) > 0 {
		if err := h.State.Save(pending); err != nil {
			return res, err
		}
	}
	// 3. A threshold going up.
	if p.Sysctls.Threshold > p.Sysctls.Current {
		if err := h.Sysctls.Set(tune.UnprivPortStart, strconv.Itoa(p.Sysctls.Threshold)); err != nil {
			return res, fmt.Errorf("%w; the table was not changed", err)
		}
	}
	// 4. The table. Beside the kernel's commit, which leaves a CPU idle
	// (0.2 s for a fresh 10k table): the snapshot's encoding, and the
	// plan apply prints (ShowsPlan).
	snap := e.startSnapshot(table, p.Digest, p.Resolved)
	defer snap.wait() // nothing reads p past Sync
	if p.ShowsPlan {
		go res.Changes.Plan()
	}
	var newGen uint32
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			tx = buildTx()
		}
		newGen, err = h.Tables.Commit(tx, gen)
		if err == nil {
			break
		}
		if errors.Is(err, nft.ErrFull) && res.Mode == ModeDelta {
			// A set outgrew the size it was made with (compiler.Capacity):
			// the kernel took nothing; a new table makes room.
			deltaOK = false
			continue
		}
		if !errors.Is(err, nft.ErrChanged) || attempt == commitRetries {
			if usesCgroups(p.Resolved) && (errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOENT)) {
				err = fmt.Errorf("%w (owners that are units or cgroups need nftables' socket cgroupv2 match: Linux 5.13 or later with nft_socket)", err)
			}
			return res, fmt.Errorf("apply table inet %s: %w; the kernel keeps its previous table", table, err)
		}
		// Another process committed between the read and the commit.
		if err := read(); err != nil {
			return res, err
		}
	}
	done := fmt.Sprintf("table inet %s was applied", table)
	// 5. A threshold going down, then the reserved ports.
	if p.Sysctls.Threshold < p.Sysctls.Current {
		if err := h.Sysctls.Set(tune.UnprivPortStart, strconv.Itoa(p.Sysctls.Threshold)); err != nil {
			return res, &PartialError{done, fmt.Errorf("%w; the threshold stays %d", err, p.Sysctls.Current)}
		}
	}
	if p.Sysctls.ReservedPorts.String() != p.Sysctls.CurrentReserved.String() {
		if err := h.Sysctls.Set(tune.ReservedPorts, p.Sysctls.ReservedPorts.String()); err != nil {
			return res, &PartialError{done, fmt.Errorf("%w; reserved ports in the ephemeral range may be picked as local ports "+
				"of outgoing connections, whose traffic portfw then drops", err)}
		}
	}
	// 6. A guard no longer asked for.
	if !p.Guard.On && res.Guard == GuardRemoved {
		if _, err := h.Guard.Remove(); err != nil {
			return res, &PartialError{done, fmt.Errorf("removing the bind guard failed: %w", err)}
		}
		pending.GuardDigest = ""
	}
	// 7. The state.
	final := pending
	final.Gen, final.Digest = newGen, p.Digest
	final.Inputs, final.Host, final.Summary = p.Inputs, hostDigest(p.Host), p.summary()
	final.ReservedPortsAdded = p.Sysctls.Added
	if p.Sysctls.Threshold == p.Sysctls.Original {
		final.UnprivPortStartOriginal = nil
	}
	if err := h.State.Save(final); err != nil {
		return res, &PartialError{done, err}
	}
	e.last = &record{gen: newGen, table: table, digest: p.Digest, resolved: p.Resolved}
	e.finishSnapshot(snap, newGen)
	afterDone()
	return res, nil
}

// recordInputs saves what an in-sync plan was made from when the state does
// not know it yet, so that the next apply of the same inputs needs no parse.
func (e *Engine) recordInputs(p *Plan, st state.State) error {
	host, sum := hostDigest(p.Host), p.summary()
	if st.Inputs == p.Inputs && st.Host == host && reflect.DeepEqual(st.Summary, sum) {
		return nil
	}
	st.Inputs, st.Host, st.Summary = p.Inputs, host, sum
	return e.Host.State.Save(st)
}

// summary is what the state records of a sync: for the next apply of the
// same inputs (when there are any), and for status.
func (p *Plan) summary() *state.Summary {
	var waiting map[string][]string
	for _, r := range p.Resolved.Reservations {
		if w := r.Owners.Waiting(); len(w) > 0 {
			if waiting == nil {
				waiting = map[string][]string{}
			}
			waiting[r.Name] = w
		}
	}
	return &state.Summary{Table: p.Table, Reservations: len(p.Resolved.Reservations), GuardMode: p.Guard.Mode, GuardOn: p.Guard.On,
		GuardNote: p.Guard.Note, Threshold: p.Sysctls.Threshold, RootOnly: p.Sysctls.Guard, Notes: p.Notes(), Warnings: p.Warnings(), Waiting: waiting}
}

// hostDigest identifies the sysctl values a plan was made with.
func hostDigest(h tune.Host) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%+v", h)))
	return hex.EncodeToString(sum[:16])
}

// recordedTable is the table as portfw's last commit here made it, with
// the drop counters read from the kernel: what a read of the whole table
// returns while nobody else commits (the generation says so before and
// after), for a read of the count sets alone, while the record is compiled
// on the other CPU, and the recorded policy it was compiled from. Nil when
// there is no such record: then read it all.
func (e *Engine) recordedTable(st state.State, table string) (*compiler.Ruleset, *model.Resolved) {
	h := e.Host
	gen, err := h.Tables.Gen()
	if err != nil || h.Snapshots == nil || st.Gen == 0 || st.Gen != gen || st.Table != table {
		return nil, nil
	}
	readCounts := parallel.GoErr(func() (*compiler.Ruleset, error) { return h.Tables.ReadSets(table, isCountSet) })
	var full *compiler.Ruleset
	rec := e.loadSnapshot(st, gen, table)
	if rec != nil {
		full = compiler.Compile(rec.resolved)
	}
	counts, err := readCounts()
	if full == nil || err != nil {
		return nil, nil
	}
	if now, err := h.Tables.Gen(); err != nil || now != gen {
		return nil, nil // a commit meanwhile: the counters may be of another table
	}
	kernel := map[string]*compiler.Set{}
	for _, s := range counts.Sets {
		kernel[s.Name] = s
	}
	n := 0
	for i, s := range full.Sets {
		if !isCountSet(s.Name) {
			continue
		}
		k := kernel[s.Name]
		if k == nil || k.Dynamic != s.Dynamic || len(k.Elements) != len(s.Elements) {
			return nil, nil
		}
		full.Sets[i], n = k, n+1
	}
	if n != len(kernel) {
		return nil, nil
	}
	return full, rec.resolved
}

// isCountSet says whether a set holds drop counters.
func isCountSet(set string) bool { return compiler.DropDirection(set) != "" }

// Drops reads the drop counters of the table by reservation, the
// reservations with none left out: its count and drop sets, and, when a
// count set counted something, the membership sets that attribute its
// keys, all of one generation (a commit in between could move a port to
// another reservation).
func (e *Engine) Drops(table string) ([]compiler.Summary, error) {
	t := e.Host.Tables
	for attempt := 0; ; attempt++ {
		gen, err := t.Gen()
		if err != nil {
			return nil, err
		}
		rs, err := t.ReadSets(table, isCountSet)
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(rs.Sets, func(s *compiler.Set) bool { return len(s.Counts) > 0 }) {
			members, err := t.ReadSets(table, compiler.IsMembershipSet)
			if err != nil {
				return nil, err
			}
			rs.Sets = append(rs.Sets, members.Sets...)
		}
		if now, err := t.Gen(); err != nil {
			return nil, err
		} else if now != gen && attempt < 2 {
			continue
		}
		var out []compiler.Summary
		for _, s := range compiler.Summarize(rs) {
			if s.DroppedPackets > 0 || s.DroppedBytes > 0 {
				out = append(out, s)
			}
		}
		return out, nil
	}
}

// Unchanged reports whether applying the policy of these inputs again would
// change nothing, without parsing it: the last sync recorded the same
// inputs, nobody committed to the ruleset since, the sysctls are as it saw
// them, and the guard still holds its policy. It returns what that sync
// reported. Any doubt is false: the caller then applies in full.
func (e *Engine) Unchanged(inputs string) (state.Summary, bool) {
	h := e.Host
	st, err := h.State.Load()
	if err != nil || inputs == "" || st.Inputs != inputs || st.Summary == nil || st.Gen == 0 {
		return state.Summary{}, false
	}
	if gen, err := h.Tables.Gen(); err != nil || gen != st.Gen {
		return state.Summary{}, false
	}
	if host, err := tune.ReadHost(h.Sysctls); err != nil || hostDigest(host) != st.Host {
		return state.Summary{}, false
	}
	if st.GuardDigest != "" || st.Summary.GuardOn {
		if h.Guard == nil || st.GuardDigest == "" {
			return state.Summary{}, false
		}
		if ok, err := h.Guard.Active(); err != nil || !ok {
			return state.Summary{}, false
		}
	}
	return *st.Summary, true
}

// guardInSync reports whether the guard holds what p asks of it: the
// state's digest matches and the kernel still has the namespace's entry
// (on), or portfw has no entry here (off).
func (e *Engine) guardInSync(p *Plan) (bool, error) {
	if !p.Guard.On {
		if p.State.GuardDigest == "" {
			return true, nil
		}
		if e.Host.Guard == nil || e.Host.Guard.Supported() != nil {
			return true, nil // nothing to remove it with; it cannot be running
		}
		return false, nil
	}
	if p.State.GuardDigest != p.Guard.Digest {
		return false, nil
	}
	// Active, not Status: Status counts every entry (20k at 10k reservations).
	active, err := e.Host.Guard.Active()
	if err != nil {
		return false, fmt.Errorf("read the bind guard: %w", err)
	}
	return active, nil
}

// sweep removes the guard entries of deleted namespaces, and listSquatters
// lists the squatters that bound before the guard: neither changes this
// namespace's enforcement, so their failures are warnings.
func (e *Engine) sweep(p *Plan, res *Result) {
	if !p.Guard.On {
		return
	}
	swept, err := e.Host.Guard.Sweep()
	res.Swept = len(swept)
	if err != nil {
		res.Warnings = append(res.Warnings, "bind guard: entries of deleted namespaces not swept: "+err.Error())
	}
}

func (e *Engine) listSquatters(p *Plan, res *Result) {
	if e.Host.Sockets == nil {
		return
	}
	socks, err := e.Host.Sockets()
	if err != nil {
		res.Warnings = append(res.Warnings, "cannot list sockets to look for squatters: "+err.Error())
		return
	}
	for _, f := range audit.Classify(p.Resolved, socks).Findings {
		if f.Verdict == audit.Squatter {
			res.Squatters = append(res.Squatters, f)
		}
	}
}

// RemoveResult is what Remove did.
type RemoveResult struct {
	// Tables are the tables deleted (those that existed).
	Tables []string
	// Guard is true when the namespace's guard entries were removed.
	Guard bool
	// Restored lists the sysctls written back, "name: old -> new".
	Restored []string
	// Corrupt is set when the state could not be read: the threshold was
	// set to the safest value instead of the recorded one, and reserved
	// ports portfw may have added were left in place.
	Corrupt error
	// Swept counts guard entries of deleted namespaces removed with this
	// namespace's (so the last remove on a host detaches the programs even
	// when namespaces were deleted without one).
	Swept int
	// Warnings are problems that did not fail the remove.
	Warnings []string
}

// Remove undoes portfw in this namespace: the threshold goes back up
// first (so no low port is ever bindable by anyone and unguarded), then the
// guard, then the tables (the state's and those named), then the reserved
// ports, then the state. It needs no policy. The caller holds the lock.
func (e *Engine) Remove(tables ...string) (RemoveResult, error) {
	h := e.Host
	var rr RemoveResult
	st, err := h.State.Load()
	if err != nil {
		if !errors.Is(err, state.ErrCorrupt) {
			return rr, err
		}
		rr.Corrupt = err
	}
	cur, err := tune.ReadHost(h.Sysctls)
	if err != nil {
		return rr, fmt.Errorf("read this namespace's sysctls: %w", err)
	}
	restore := -1
	switch {
	case rr.Corrupt != nil && cur.UnprivPortStart < 1024:
		// Nobody knows what it was: the kernel's default is the safe value.
		restore = 1024
	case rr.Corrupt == nil && st.UnprivPortStartOriginal != nil && *st.UnprivPortStartOriginal != cur.UnprivPortStart:
		restore = *st.UnprivPortStartOriginal
	}
	if restore >= 0 {
		if err := h.Sysctls.Set(tune.UnprivPortStart, strconv.Itoa(restore)); err != nil {
			return rr, fmt.Errorf("%w; nothing was removed", err)
		}
		rr.Restored = append(rr.Restored, fmt.Sprintf("%s: %d -> %d", tune.UnprivPortStart, cur.UnprivPortStart, restore))
	}
	if h.Guard != nil && h.Guard.Supported() == nil {
		if rr.Guard, err = h.Guard.Remove(); err != nil {
			return rr, fmt.Errorf("remove the bind guard: %w", err)
		}
		swept, err := h.Guard.Sweep()
		rr.Swept = len(swept)
		if err != nil {
			rr.Warnings = append(rr.Warnings, "bind guard: entries of deleted namespaces not swept: "+err.Error())
		}
	}
	names := tables
	if st.Table != "" {
		names = append([]string{st.Table}, tables...)
	}
	tx := new(nft.Tx)
	seen := map[string]bool{}
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		ok, err := h.Tables.HasTable(name)
		if err != nil {
			return rr, err
		}
		if ok {
			tx.Remove(name)
			rr.Tables = append(rr.Tables, name)
		}
	}
	if !tx.Empty() {
		if _, err := h.Tables.Commit(tx, 0); err != nil {
			return rr, fmt.Errorf("delete tables: %w", err)
		}
	}
	if rr.Corrupt == nil && len(st.ReservedPortsAdded) > 0 {
		next := cur.ReservedPorts.Minus(st.ReservedPortsAdded)
		if err := h.Sysctls.Set(tune.ReservedPorts, next.String()); err != nil {
			return rr, err
		}
		rr.Restored = append(rr.Restored, fmt.Sprintf("%s: %q -> %q", tune.ReservedPorts, cur.ReservedPorts, next))
	}
	return rr, h.State.Delete()
}

// Status is what portfw holds in this namespace.
type Status struct {
	// Table is the table read (nil: not installed).
	Table *compiler.Ruleset
	// Recorded is the policy Table was compiled from when it came from
	// portfw's record of its last commit (see recordedTable), else nil.
	Recorded *model.Resolved
	// State is what portfw recorded; StateErr why it could not be read.
	State    state.State
	StateErr error
	// Host is the namespace's sysctls; HostErr why they could not be read.
	Host    tune.Host
	HostErr error
	// Guard is the bind guard; GuardErr why it could not be read, or why
	// it cannot run here.
	Guard    bindguard.Info
	GuardErr error
}

// Status reads the namespace: the named table (the state's when empty),
// the state, the sysctls and the guard. It changes nothing and needs no
// lock.
func (e *Engine) Status(table string) (Status, error) {
	h := e.Host
	var s Status
	guard := parallel.GoErr(e.guardStatus) // the guard's maps, beside the table
	s.State, s.StateErr = h.State.Load()
	if table == "" {
		table = s.State.Table
	}
	if table == "" {
		table = model.DefaultTable
	}
	if s.Table, s.Recorded = e.recordedTable(s.State, table); s.Table == nil {
		var err error
		if s.Table, err = nft.ReadOrNil(h.Tables, table); err != nil {
			return s, err
		}
	}
	s.Host, s.HostErr = tune.ReadHost(h.Sysctls)
	s.Guard, s.GuardErr = guard()
	return s, nil
}

// guardStatus is the guard's Status, or why it cannot run here. A guard
// attached and active for this namespace is its own proof that the kernel
// runs it: the support probe, which loads both programs (~60 ms), is asked
// only to explain a guard that is not.
func (e *Engine) guardStatus() (bindguard.Info, error) {
	g := e.Host.Guard
	if g == nil {
		return bindguard.Info{}, bindguard.ErrNotSupported
	}
	info, err := g.Status()
	if err == nil && info.Attached && info.Active {
		return info, nil
	}
	if err := g.Supported(); err != nil {
		return bindguard.Info{}, err
	}
	return info, err
}
