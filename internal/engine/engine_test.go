package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// The engine's tests run against fakes of every host effect, wrapped to
// record the order of what changed, and check after every change that no
// low port is open to anyone without a guard.

type world struct {
	t      *testing.T
	tables *nft.Fake
	sys    *sysctl.Fake
	store  *state.Mem
	guard  *bindguard.Fake
	events []string
	e      *Engine
	// guarded says whether a threshold below 1024 is covered right now.
	socks []audit.Socket
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, tables: nft.NewFake(), sys: sysctl.NewFake(), store: &state.Mem{}, guard: &bindguard.Fake{}}
	w.e = &Engine{Host: Host{
		Tables:  &recTables{w, w.tables},
		Sysctls: &recSysctls{w, w.sys},
		State:   &recStore{w, w.store},
		Lock:    w.store,
		Guard:   &recGuard{w, w.guard},
		Sockets: func() ([]audit.Socket, error) { return w.socks, nil },
	}}
	return w
}

func (w *world) event(s string) {
	w.events = append(w.events, s)
	w.checkSafe(s)
}

// checkSafe: whenever the threshold is below 1024, every port from it to
// 1023 is guarded: held by the guard's root-only entries in the table, or
// by the bind guard, or reserved by the policy.
func (w *world) checkSafe(after string) {
	v, _ := w.sys.Get(tune.UnprivPortStart)
	var thr int
	fmt.Sscan(v, &thr)
	if thr >= 1024 {
		return
	}
	if spec := w.guard.Spec(); spec != nil {
		return
	}
	rs, err := w.tables.Read(model.DefaultTable)
	covered := map[int]bool{}
	if err == nil {
		for _, s := range rs.Sets {
			if s.Name != "res_port" && s.Name != "res_port_r" {
				continue
			}
			for _, e := range s.Elements {
				if e.Proto == model.UDP {
					for p := int(e.Ports.Lo); p <= int(e.Ports.Hi); p++ {
						covered[p] = true
					}
				}
			}
		}
	}
	for p := max(thr, 1); p < 1024; p++ {
		if !covered[p] {
			w.t.Errorf("after %s: the threshold is %d and udp/%d is guarded by nothing", after, thr, p)
			return
		}
	}
}

type recTables struct {
	w *world
	nft.Kernel
}

func (r *recTables) Commit(tx *nft.Tx, gen uint32) (uint32, error) {
	g, err := r.Kernel.Commit(tx, gen)
	if err == nil && !tx.Empty() {
		r.w.event("commit")
	}
	return g, err
}

type recSysctls struct {
	w *world
	sysctl.Sysctls
}

func (r *recSysctls) Set(name, value string) error {
	if err := r.Sysctls.Set(name, value); err != nil {
		return err
	}
	r.w.event(strings.TrimPrefix(name, "net.ipv4.") + "=" + value)
	return nil
}

type recStore struct {
	w *world
	state.Store
}

func (r *recStore) Save(st state.State) error {
	if err := r.Store.Save(st); err != nil {
		return err
	}
	orig := "-"
	if st.UnprivPortStartOriginal != nil {
		orig = fmt.Sprint(*st.UnprivPortStartOriginal)
	}
	r.w.event("state(original=" + orig + ")")
	return nil
}

func (r *recStore) Delete() error {
	if err := r.Store.Delete(); err != nil {
		return err
	}
	r.w.event("state deleted")
	return nil
}

type recGuard struct {
	w *world
	Guard
}

func (r *recGuard) Apply(res *model.Resolved) error {
	if err := r.Guard.Apply(res); err != nil {
		return err
	}
	r.w.event("guard applied")
	return nil
}

func (r *recGuard) Remove() (bool, error) {
	had, err := r.Guard.Remove()
	if had && err == nil {
		r.w.event("guard removed")
	}
	return had, err
}

var users = resolve.Static{Users: map[string]uint32{"www-data": 33, "alice": 1000},
	Cgroups: resolve.StaticCgroups{IDs: map[string]uint64{"/system.slice/web.service": 4242}}}

func load(t *testing.T, text string) (*policy.Policy, *model.Resolved) {
	t.Helper()
	p, err := policy.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	r, err := resolve.Resolve(p, users)
	if err != nil {
		t.Fatal(err)
	}
	return p, r
}

func policyText(settings string) string {
	return "version: 1\nsettings: {" + settings + "}\nreservations:\n  - name: web\n    ports: [80]\n    protocols: [tcp]\n    owner: { users: [www-data] }\n"
}

// apply runs what `portfw apply` runs: lock, prepare, sync.
func (w *world) apply(text string) (Result, error) {
	w.t.Helper()
	unlock, err := w.e.Lock()
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	pol, res := load(w.t, text)
	p, err := w.e.Prepare("p.yaml", pol, res)
	if err != nil {
		return Result{}, err
	}
	p.ShowsPlan = true // as apply: the plan beside the commit (under -race)
	return w.e.Sync(p, false)
}

func (w *world) mustApply(text string) Result {
	w.t.Helper()
	r, err := w.apply(text)
	if err != nil {
		w.t.Fatalf("apply: %v", err)
	}
	return r
}

func (w *world) threshold() string { v, _ := w.sys.Get(tune.UnprivPortStart); return v }

func (w *world) wantEvents(want ...string) {
	w.t.Helper()
	if !slices.Equal(w.events, want) {
		w.t.Errorf("events:\n  %s\nwant:\n  %s", strings.Join(w.events, "\n  "), strings.Join(want, "\n  "))
	}
	w.events = nil
}

// TestLowerAfterRules: a threshold going down is lowered only after the
// state recorded the original and the table guards the range; one going up
// is raised before the table drops its guard; remove raises it first.
func TestLowerAfterRules(t *testing.T) {
	w := newWorld(t)
	w.guard.Unsupported = bindguard.ErrNotSupported
	w.mustApply(policyText("unprivileged_port_start: 80"))
	w.wantEvents("state(original=1024)", "commit", "ip_unprivileged_port_start=80", "state(original=1024)")
	if w.threshold() != "80" {
		t.Fatalf("threshold %s", w.threshold())
	}
	// Up again (keep): raised before the table loses its guard entries.
	w.mustApply(policyText("unprivileged_port_start: keep"))
	w.wantEvents("state(original=1024)", "ip_unprivileged_port_start=1024", "commit", "state(original=-)")
	// Down, then remove: the threshold goes back up before the table goes.
	w.mustApply(policyText("unprivileged_port_start: 80"))
	w.events = nil
	unlock, _ := w.e.Lock()
	rr, err := w.e.Remove()
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	w.wantEvents("ip_unprivileged_port_start=1024", "commit", "state deleted")
	if !slices.Equal(rr.Tables, []string{"portfw"}) || len(rr.Restored) != 1 {
		t.Errorf("remove: %+v", rr)
	}
	if tabs := w.tables.Tables(); len(tabs) != 0 {
		t.Errorf("tables after remove: %v", tabs)
	}
}

// TestGuardFirstAndLast: the bind guard goes in before the table and the
// sysctls change, and goes only after them when the policy turns it off.
func TestGuardFirstAndLast(t *testing.T) {
	w := newWorld(t)
	r := w.mustApply(policyText("bind_guard: auto"))
	// No sysctl changes: no state to record before the commit.
	w.wantEvents("guard applied", "commit", "state(original=-)")
	if r.Guard != GuardUpdated || w.guard.Spec() == nil || w.threshold() != "1024" {
		t.Fatalf("guard %v spec %v threshold %s", r.Guard, w.guard.Spec(), w.threshold())
	}
	// The table is the same with the guard off: only the guard goes.
	r = w.mustApply(policyText("bind_guard: off"))
	w.wantEvents("guard removed", "state(original=-)")
	if r.Guard != GuardRemoved || w.guard.Spec() != nil {
		t.Errorf("guard %v spec %v", r.Guard, w.guard.Spec())
	}
	// on where it cannot run: refused before anything changes.
	w.guard.Unsupported = fmt.Errorf("%w: test", bindguard.ErrNotSupported)
	if _, err := w.apply(policyText("bind_guard: on")); err == nil || !strings.Contains(err.Error(), "bind_guard is on but") {
		t.Errorf("bind_guard: on without support: %v", err)
	}
	w.wantEvents()
}

// TestFailureMidway: a commit the kernel refuses leaves the previous
// table and a threshold never lowered; a threshold that cannot be lowered
// after the table went in is reported as exactly that.
func TestFailureMidway(t *testing.T) {
	w := newWorld(t)
	w.guard.Unsupported = bindguard.ErrNotSupported
	w.tables.FailNext = errors.New("kernel says no")
	if _, err := w.apply(policyText("unprivileged_port_start: 80")); err == nil || !strings.Contains(err.Error(), "the kernel keeps its previous table") {
		t.Fatalf("apply with a failing commit: %v", err)
	}
	w.wantEvents("state(original=1024)")
	if w.threshold() != "1024" {
		t.Errorf("threshold %s after a failed commit", w.threshold())
	}
	w.sys.Fail = map[string]error{tune.UnprivPortStart: errors.New("EPERM")}
	_, err := w.apply(policyText("unprivileged_port_start: 80"))
	var partial *PartialError
	if !errors.As(err, &partial) || !strings.Contains(err.Error(), "table inet portfw was applied, but") || !strings.Contains(err.Error(), "the threshold stays 1024") {
		t.Fatalf("apply with a failing sysctl: %v", err)
	}
	w.wantEvents("state(original=1024)", "commit")
	// The next apply, once the sysctl can be written, finishes the job.
	w.sys.Fail = nil
	w.mustApply(policyText("unprivileged_port_start: 80"))
	if w.threshold() != "80" {
		t.Errorf("threshold %s", w.threshold())
	}
}

// TestInSyncByGeneration: an apply with nothing to do reads nothing back
// while nobody else committed; after someone did, it reads once and
// repairs what they changed.
func TestInSyncByGeneration(t *testing.T) {
	w := newWorld(t)
	text := policyText("bind_guard: auto")
	w.mustApply(text)
	reads := w.tables.Reads
	r := w.mustApply(text)
	if !r.InSync() || r.Read || w.tables.Reads != reads {
		t.Fatalf("second apply: in sync %v, read %v (%d reads, was %d); want in sync without a read", r.InSync(), r.Read, w.tables.Reads, reads)
	}
	// Another process deletes an element.
	w.tables.Tamper("portfw", func(rs *compiler.Ruleset) *compiler.Ruleset {
		rs.Sets[0].Elements = rs.Sets[0].Elements[:0]
		return rs
	})
	r = w.mustApply(text)
	if r.InSync() || !r.Read || r.Mode != ModeDelta {
		t.Errorf("after tampering: %+v; want a delta after a read", r)
	}
	// Someone commits to an unrelated table: read once, nothing to do,
	// and the generation is recorded so the next apply reads nothing.
	w.tables.Tamper("other", func(*compiler.Ruleset) *compiler.Ruleset { return &compiler.Ruleset{Table: "other"} })
	if r = w.mustApply(text); !r.InSync() || !r.Read {
		t.Errorf("after an unrelated commit: %+v", r)
	}
	reads = w.tables.Reads
	if r = w.mustApply(text); !r.InSync() || r.Read || w.tables.Reads != reads {
		t.Errorf("next apply read the table again: %+v", r)
	}
}

// TestChangeWithoutRead: an Engine that committed last (the daemon)
// applies the next policy's change as a delta computed from what it
// committed, without reading the table; after another process's commit it
// reads again. Either way the kernel ends with the new policy's table.
func TestChangeWithoutRead(t *testing.T) {
	w := newWorld(t)
	two := func(owner string) string {
		return policyText("bind_guard: off") + "  - name: app\n    ports: [8080]\n    owner: { users: [" + owner + "] }\n"
	}
	w.mustApply(two("alice"))
	reads := w.tables.Reads
	r := w.mustApply(two("www-data"))
	if r.Read || w.tables.Reads != reads || r.Mode != ModeDelta || !slices.Equal(r.Changes.Changed, []string{"app"}) {
		t.Fatalf("one-owner change: %+v (%d reads, was %d); want a delta of app without a read", r, w.tables.Reads, reads)
	}
	_, want := load(t, two("www-data"))
	p, _ := w.e.Prepare("p.yaml", nil, want)
	if got, _ := w.tables.Read(model.DefaultTable); !compiler.Diff(got, p.Ruleset()).InSync() {
		t.Fatalf("the kernel does not hold the new policy's table:\n%s", got)
	}
	// A settings change replaces the table, still without reading.
	reads = w.tables.Reads
	if r = w.mustApply(strings.Replace(two("www-data"), "bind_guard: off", "bind_guard: off, log: false", 1)); r.Read || r.Mode != ModeReplace {
		t.Errorf("settings change: %+v; want a replace without a read", r)
	}
	if w.tables.Reads != reads {
		t.Errorf("%d reads for the settings change", w.tables.Reads-reads)
	}
	// Someone else commits: the next change reads the table first.
	w.tables.Tamper("other", func(*compiler.Ruleset) *compiler.Ruleset { return &compiler.Ruleset{Table: "other"} })
	if r = w.mustApply(two("alice")); !r.Read || r.Mode != ModeReplace {
		t.Errorf("after another commit: %+v; want a read", r)
	}
	// A fresh Engine (a one-shot apply) knows nothing: it reads.
	w.e.last = nil
	if r = w.mustApply(two("www-data")); !r.Read {
		t.Errorf("a fresh engine did not read: %+v", r)
	}
}

// racing commits once, from "another process", between the engine's read
// and its commit.
type racing struct {
	nft.Kernel
	fake *nft.Fake
	done bool
}

func (r *racing) Read(table string) (*compiler.Ruleset, error) {
	rs, err := r.Kernel.Read(table)
	if !r.done {
		r.done = true
		r.fake.Tamper("intruder", func(*compiler.Ruleset) *compiler.Ruleset { return &compiler.Ruleset{Table: "intruder"} })
	}
	return rs, err
}

// TestCommitRereadsAfterRace: a commit built on a generation another
// process has moved past is refused by the kernel; the engine reads again
// and commits on the new generation, never blind.
func TestCommitRereadsAfterRace(t *testing.T) {
	w := newWorld(t)
	race := &racing{Kernel: w.tables, fake: w.tables}
	w.e.Host.Tables = race
	r := w.mustApply(policyText("bind_guard: off"))
	if !race.done || r.Mode != ModeReplace || w.tables.Reads != 2 {
		t.Errorf("result %+v after %d reads; want a replace after a second read", r, w.tables.Reads)
	}
	if !slices.Equal(w.tables.Tables(), []string{"intruder", "portfw"}) {
		t.Errorf("tables %v: the other process's table must survive", w.tables.Tables())
	}
}

// TestTableRenamed: a policy that renames its table removes the old one in
// the same transaction.
func TestTableRenamed(t *testing.T) {
	w := newWorld(t)
	w.mustApply(policyText("bind_guard: off"))
	commits := w.tables.Replaces
	r := w.mustApply(policyText("bind_guard: off, table: renamed"))
	if r.OldTable != "portfw" || !slices.Equal(w.tables.Tables(), []string{"renamed"}) || w.tables.Replaces != commits+1 {
		t.Errorf("result %+v, tables %v", r, w.tables.Tables())
	}
	st, _ := w.store.Load()
	if st.Table != "renamed" {
		t.Errorf("state names table %q", st.Table)
	}
}

// TestCorruptState: apply refuses with the way out; remove restores the
// safest threshold and sets the file aside.
func TestCorruptState(t *testing.T) {
	w := newWorld(t)
	w.guard.Unsupported = bindguard.ErrNotSupported
	w.mustApply(policyText("unprivileged_port_start: 80"))
	w.store.Corrupt = true
	if _, err := w.apply(policyText("unprivileged_port_start: 80")); err == nil || !strings.Contains(err.Error(), "`portfw remove` restores the safest values") {
		t.Fatalf("apply over a corrupt state: %v", err)
	}
	w.events = nil
	rr, err := w.e.Remove("portfw")
	if err != nil || rr.Corrupt == nil || w.threshold() != "1024" || len(w.tables.Tables()) != 0 {
		t.Fatalf("remove over a corrupt state: %+v %v; threshold %s tables %v", rr, err, w.threshold(), w.tables.Tables())
	}
	w.wantEvents("ip_unprivileged_port_start=1024", "commit", "state deleted")
}

// TestReadOnlySysctls: a container's read-only /proc/sys: the table goes
// in, nothing is written, and the warning says what is missing.
func TestReadOnlySysctls(t *testing.T) {
	w := newWorld(t)
	w.sys.ReadOnly = true
	pol, res := load(t, "version: 1\nreservations:\n  - name: app\n    ports: [40000]\n    owner: { users: [alice] }\n")
	p, err := w.e.Prepare("p.yaml", pol, res)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Warnings(), "\n"), "cannot reserve ports 40000") {
		t.Errorf("warnings %q", p.Warnings())
	}
	if _, err := w.e.Sync(p, false); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if len(w.sys.Written()) != 0 || len(w.tables.Tables()) != 1 {
		t.Errorf("writes %v, tables %v", w.sys.Written(), w.tables.Tables())
	}
	if _, err := w.apply(policyText("unprivileged_port_start: 80")); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("a threshold with read-only sysctls: %v", err)
	}
}

// TestLocked: a second holder of the namespace's lock is refused.
func TestLocked(t *testing.T) {
	w := newWorld(t)
	unlock, err := w.e.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := w.apply(policyText("")); !errors.Is(err, state.ErrLocked) {
		t.Errorf("apply while locked: %v", err)
	}
}

// TestSquattersReported: a socket a non-owner bound before the guard went
// in is reported by the sync that installs the guard.
func TestSquattersReported(t *testing.T) {
	w := newWorld(t)
	w.socks = []audit.Socket{{Protocol: model.TCP, Port: 80, UID: 1000, Inode: 7}, {Protocol: model.TCP, Port: 80, UID: 33, Inode: 8}}
	r := w.mustApply(policyText("bind_guard: auto"))
	if len(r.Squatters) != 1 || r.Squatters[0].UID != 1000 || r.Squatters[0].Reservation != "web" {
		t.Errorf("squatters %+v", r.Squatters)
	}
	// The listing runs beside the commit: its failure is a warning of the
	// sync that committed, and the commit stands.
	w.e.Host.Sockets = func() ([]audit.Socket, error) { return nil, errors.New("sock_diag: no") }
	r = w.mustApply(policyText("bind_guard: auto, allow_root: false"))
	if r.Mode == ModeNone || len(r.Squatters) != 0 || !slices.ContainsFunc(r.Warnings, func(s string) bool { return strings.Contains(s, "sock_diag: no") }) {
		t.Errorf("a failed listing beside a commit: %+v", r)
	}
}

// TestDry: a dry sync changes nothing.
func TestDry(t *testing.T) {
	w := newWorld(t)
	pol, res := load(t, policyText("unprivileged_port_start: 80"))
	p, err := w.e.Prepare("p.yaml", pol, res)
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.e.Sync(p, true)
	if err != nil || r.InSync() || len(r.Sysctls) != 1 {
		t.Fatalf("dry sync: %+v %v", r, err)
	}
	w.wantEvents()
}

// TestChangeFromSnapshot: a one-shot apply (a new process, no record in
// memory) computes a change from the record the previous apply saved,
// without reading the table, but only when that record is provably what
// the kernel holds: the state's generation is the kernel's and the saved
// policy hashes to the state's digest. A dry run (diff) always reads.
func TestChangeFromSnapshot(t *testing.T) {
	w := newWorld(t)
	w.e.Host.Snapshots, w.e.KeepSnapshot = w.store, true
	two := func(owner string) string {
		return policyText("bind_guard: off") + "  - name: app\n    ports: [8080]\n    owner: { users: [" + owner + "] }\n"
	}
	inKernel := func(text string) {
		t.Helper()
		_, want := load(t, text)
		p, _ := w.e.Prepare("p.yaml", nil, want)
		if got, _ := w.tables.Read(model.DefaultTable); !compiler.Diff(got, p.Ruleset()).InSync() {
			t.Fatalf("the kernel does not hold the policy's table:\n%s", got)
		}
	}
	w.mustApply(two("alice"))
	if w.store.Snapshot == nil {
		t.Fatal("no snapshot saved")
	}
	w.e.last = nil // a new process
	reads := w.tables.Reads
	r := w.mustApply(two("www-data"))
	if r.Read || w.tables.Reads != reads || r.Mode != ModeDelta || !slices.Equal(r.Changes.Changed, []string{"app"}) {
		t.Fatalf("one-owner change from the snapshot: %+v (%d reads, was %d); want a delta of app without a read", r, w.tables.Reads, reads)
	}
	inKernel(two("www-data"))

	// A snapshot whose policy does not hash to the state's digest (stale,
	// damaged, forged) is not used.
	st, _ := w.store.Load()
	_, other := load(t, two("alice"))
	w.store.Snapshot = binary.AppendUvarint(appendSnapshotBody(nil, st.Table, st.Digest, other), uint64(st.Gen))
	w.e.last = nil
	if r = w.mustApply(two("alice")); !r.Read {
		t.Errorf("a snapshot of another policy was trusted: %+v", r)
	}
	inKernel(two("alice"))
	w.store.Snapshot = []byte("garbage")
	w.e.last = nil
	if r = w.mustApply(two("www-data")); !r.Read {
		t.Errorf("a garbled snapshot was trusted: %+v", r)
	}
	inKernel(two("www-data"))

	// Another process committed since: the generation differs, it reads.
	w.tables.Tamper("other", func(*compiler.Ruleset) *compiler.Ruleset { return &compiler.Ruleset{Table: "other"} })
	w.e.last = nil
	if r = w.mustApply(two("alice")); !r.Read {
		t.Errorf("after another process's commit: %+v; want a read", r)
	}
	inKernel(two("alice"))

	// A dry run compares with the kernel, never with a record.
	w.e.last = nil
	pol, res := load(t, two("www-data"))
	p, err := w.e.Prepare("p.yaml", pol, res)
	if err != nil {
		t.Fatal(err)
	}
	if r, err = w.e.Sync(p, true); err != nil || !r.Read {
		t.Errorf("dry run: %+v %v; want a read", r, err)
	}

	// An Engine that does not keep snapshots (the daemon) writes none.
	w2 := newWorld(t)
	w2.e.Host.Snapshots = w2.store
	w2.mustApply(two("alice"))
	if w2.store.Snapshot != nil {
		t.Error("a snapshot was saved without KeepSnapshot")
	}
}

// TestNoSocketCgroupv2: a kernel without nftables' socket cgroupv2 match
// refuses the commit; the error says what owners that are cgroups need and
// the previous table stays.
func TestNoSocketCgroupv2(t *testing.T) {
	w := newWorld(t)
	w.guard.Unsupported = bindguard.ErrNotSupported
	w.mustApply(policyText(""))
	before, _ := w.tables.Read(model.DefaultTable)
	w.tables.FailNext = fmt.Errorf("netlink receive: %w", syscall.EOPNOTSUPP)
	_, err := w.apply("version: 1\nreservations:\n  - name: web\n    ports: [80]\n    owner: { cgroups: [/system.slice/web.service] }\n")
	if err == nil || !strings.Contains(err.Error(), "need nftables' socket cgroupv2 match: Linux 5.13 or later") ||
		!strings.Contains(err.Error(), "the kernel keeps its previous table") {
		t.Fatalf("apply on a kernel without socket cgroupv2: %v", err)
	}
	after, _ := w.tables.Read(model.DefaultTable)
	if before.String() != after.String() {
		t.Error("the failed apply changed the table")
	}
}

// TestDeltaPastCapacity: a change whose elements no longer fit the sets as
// they were made (the kernel's ENFILE) replaces the table instead, sized
// for the new policy; the next small change is a delta again.
func TestDeltaPastCapacity(t *testing.T) {
	w := newWorld(t)
	many := func(n int, owner string) string {
		var b strings.Builder
		b.WriteString(policyText("bind_guard: off"))
		for i := range n {
			fmt.Fprintf(&b, "  - name: r%d\n    ports: [%d]\n    owner: { users: [%s] }\n", i, 20000+i, owner)
		}
		return b.String()
	}
	w.mustApply(many(10, "alice")) // 21 tcp+udp keys: sets of 256
	r := w.mustApply(many(200, "alice"))
	if r.Mode != ModeReplace || r.Read {
		t.Fatalf("400 keys into sets of 256: %+v; want a replace without a read", r)
	}
	_, want := load(t, many(200, "alice"))
	p, _ := w.e.Prepare("p.yaml", nil, want)
	if got, _ := w.tables.Read(model.DefaultTable); !compiler.Diff(got, p.Ruleset()).InSync() {
		t.Fatalf("the kernel does not hold the bigger policy's table")
	}
	if r := w.mustApply(many(200, "www-data")); r.Mode != ModeDelta {
		t.Fatalf("an owner change after the replace: %+v; want a delta", r)
	}
}

// TestGuardFailureChangesNothing: the guard goes in while the change is
// worked out; when it fails, nothing else is changed, fresh or not.
func TestGuardFailureChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.guard.FailApply = errors.New("no room")
	if _, err := w.apply(policyText("bind_guard: auto")); err == nil || !strings.Contains(err.Error(), "install the bind guard: no room; nothing else was changed") {
		t.Fatalf("fresh apply with a failing guard: %v", err)
	}
	w.wantEvents()
	if _, err := w.tables.Read(model.DefaultTable); !errors.Is(err, nft.ErrNoTable) {
		t.Fatalf("a table was made: %v", err)
	}
	w.mustApply(policyText("bind_guard: auto"))
	w.wantEvents("guard applied", "commit", "state(original=-)")
	before, _ := w.tables.Read(model.DefaultTable)
	w.guard.FailApply = errors.New("no room")
	if _, err := w.apply(policyText("bind_guard: auto") + "  - name: app\n    ports: [8080]\n    owner: { users: [alice] }\n"); err == nil ||
		!strings.Contains(err.Error(), "nothing else was changed") {
		t.Fatalf("a change with a failing guard: %v", err)
	}
	w.wantEvents()
	if after, _ := w.tables.Read(model.DefaultTable); after.String() != before.String() {
		t.Fatalf("the table changed:\n%s", after)
	}
}

// TestStatusFromRecord: while portfw's last commit is the ruleset's last,
// Status reads the count sets alone and gives what a read of the whole
// table gives, counters included; after another process's commit, or
// with no record, it reads the whole table.
func TestStatusFromRecord(t *testing.T) {
	w := newWorld(t)
	w.e.Host.Snapshots, w.e.KeepSnapshot = w.store, true
	text := policyText("bind_guard: off") + "  - name: app\n    ports: [8080]\n    addresses: [192.0.2.1]\n    owner: { users: [alice] }\n" +
		"  - name: range\n    ports: [\"9000-9009\"]\n    owner: { users: [alice] }\n"
	w.mustApply(text)
	// One count on a drop set's element (address-scoped), one in a count
	// set (a port of a range).
	addr := netip.MustParsePrefix("192.0.2.1/32")
	w.tables.Count(model.DefaultTable, "drop4_in", compiler.Element{Addr: addr, Proto: model.TCP, Ports: model.Port(8080)}, 3, 300)
	w.tables.Count(model.DefaultTable, "cnt_out", compiler.Element{Proto: model.UDP, Ports: model.Port(9005)}, 3, 300)
	want, _ := w.tables.Read(model.DefaultTable)
	w.e.last = nil // a new process: `portfw status`
	reads, setReads := w.tables.Reads, w.tables.SetReads
	s, err := w.e.Status("")
	if err != nil {
		t.Fatal(err)
	}
	if w.tables.Reads != reads || w.tables.SetReads != setReads+1 {
		t.Fatalf("%d full reads and %d set reads; want 0 and 1", w.tables.Reads-reads, w.tables.SetReads-setReads)
	}
	if got, wantSum := compiler.Summarize(s.Table), compiler.Summarize(want); !reflect.DeepEqual(got, wantSum) {
		t.Fatalf("status from the record:\n%+v\nfrom the table:\n%+v", got, wantSum)
	}
	dropped := uint64(0)
	for _, sum := range compiler.Summarize(s.Table) {
		dropped += sum.DroppedPackets
	}
	if dropped != 6 {
		t.Fatalf("%d packets counted, want 6", dropped)
	}
	if !compiler.Diff(s.Table, want).InSync() {
		t.Fatal("the table from the record differs from the kernel's")
	}
	// What status says of a policy against the table: from the recorded
	// policy, reservation by reservation, what the whole comparison says.
	_, edited := load(t, strings.Replace(text, "users: [alice]", "users: [alice, 7]", 1)+"  - name: new\n    ports: [7000]\n    owner: { users: [1] }\n")
	if s.Recorded == nil {
		t.Fatal("status from the record has no recorded policy")
	}
	c, _, _ := compiler.Change(s.Recorded, edited)
	if d := compiler.Diff(s.Table, compiler.Compile(edited)); !slices.Equal(c.Added, d.Added) || !slices.Equal(c.Changed, d.Changed) ||
		!slices.Equal(c.Removed, d.Removed) || c.InSync() != d.InSync() || !slices.Equal(c.Added, []string{"new"}) {
		t.Fatalf("from the record: %+v; comparing the tables: %+v", c, d)
	}
	// Another process commits: the whole table is read.
	w.tables.Tamper("other", func(*compiler.Ruleset) *compiler.Ruleset { return &compiler.Ruleset{Table: "other"} })
	if s, err := w.e.Status(""); err != nil || w.tables.Reads != reads+1 || s.Recorded != nil {
		t.Fatalf("after another commit: %v, %d full reads, recorded %v", err, w.tables.Reads-reads, s.Recorded != nil)
	}
}

// TestDrops: the metrics' read of the counters: a count set's keys by the
// reservation whose ports hold them (a key of a port no longer reserved
// left out), a drop set's elements by their own, and nothing for
// reservations that dropped nothing.
func TestDrops(t *testing.T) {
	w := newWorld(t)
	w.mustApply(policyText("bind_guard: off") + "  - name: app\n    ports: [8080]\n    addresses: [192.0.2.1]\n    owner: { users: [alice] }\n" +
		"  - name: range\n    ports: [\"9000-9009\"]\n    owner: { users: [alice] }\n")
	if got, err := w.e.Drops(model.DefaultTable); err != nil || len(got) != 0 {
		t.Fatalf("before any drop: %+v, %v", got, err)
	}
	w.tables.Count(model.DefaultTable, "drop4_in", compiler.Element{Addr: netip.MustParsePrefix("192.0.2.1/32"), Proto: model.TCP, Ports: model.Port(8080)}, 2, 200)
	w.tables.Count(model.DefaultTable, "cnt_out", compiler.Element{Proto: model.UDP, Ports: model.Port(9009)}, 5, 500)
	w.tables.Count(model.DefaultTable, "cnt_out", compiler.Element{Proto: model.UDP, Ports: model.Port(9010)}, 7, 700)
	got, err := w.e.Drops(model.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	for _, s := range got {
		sums[s.Name] = fmt.Sprintf("in %d/%d out %d/%d", s.DroppedIn.Packets, s.DroppedIn.Bytes, s.DroppedOut.Packets, s.DroppedOut.Bytes)
	}
	if want := map[string]string{"app": "in 2/200 out 0/0", "range": "in 0/0 out 5/500"}; !reflect.DeepEqual(sums, want) {
		t.Errorf("drops %v, want %v", sums, want)
	}
}

// TestStatusGuard: status reports an active guard without the support
// probe (it loads both programs), and one that is not there with the
// probe's reason.
func TestStatusGuard(t *testing.T) {
	w := newWorld(t)
	w.mustApply(policyText("bind_guard: on"))
	probes := w.guard.Probes
	s, err := w.e.Status("")
	if err != nil || s.GuardErr != nil || !s.Guard.Active || !s.Guard.Attached {
		t.Fatalf("status of an active guard: %v, %v, %+v", err, s.GuardErr, s.Guard)
	}
	if w.guard.Probes != probes {
		t.Errorf("status probed the kernel's support %d times for an active guard", w.guard.Probes-probes)
	}
	w.mustApply(policyText("bind_guard: off"))
	w.guard.Unsupported = fmt.Errorf("%w: no BPF here", bindguard.ErrNotSupported)
	s, err = w.e.Status("")
	if err != nil || !errors.Is(s.GuardErr, bindguard.ErrNotSupported) || s.Guard.Active {
		t.Fatalf("status without a guard on an unsupported kernel: %v, %v, %+v", err, s.GuardErr, s.Guard)
	}
}

// TestSweepOnApplyAndRemove: the guard entries of namespaces deleted
// without a remove are swept by the next apply that commits, and by a
// remove (so the last remove on a host detaches the programs).
func TestSweepOnApplyAndRemove(t *testing.T) {
	w := newWorld(t)
	w.guard.Dead = []uint64{41, 42}
	if r := w.mustApply(policyText("bind_guard: on")); r.Swept != 2 {
		t.Errorf("apply swept %d entries, want 2", r.Swept)
	}
	w.guard.Dead = []uint64{43}
	unlock, err := w.e.Lock()
	if err != nil {
		t.Fatal(err)
	}
	rr, err := w.e.Remove()
	unlock()
	if err != nil || !rr.Guard || rr.Swept != 1 || len(w.guard.Dead) != 0 {
		t.Errorf("remove: %+v %v (left %v), want this namespace's entry and one dead one removed", rr, err, w.guard.Dead)
	}
}
