package watch

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/clock"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// The daemon's tests run it against fakes of every host effect and a fake
// clock: file events arrive on a channel, and the test moves time. Idle
// tells the test when the daemon has handled what it was sent.

const policyA = `version: 1
settings: { bind_guard: off }
reservations:
  - name: web
    ports: [8080]
    protocols: [tcp]
    owner: { users: [alice] }
`

var users = resolve.Static{Users: map[string]uint32{"alice": 1000, "bob": 1001}}

// syncedLog is a logger whose output tests can read while the daemon runs.
type syncedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type harness struct {
	t       *testing.T
	dir     string
	path    string
	tables  *nft.Fake
	sys     *sysctl.Fake
	store   *state.Mem
	guard   *bindguard.Fake
	e       *engine.Engine
	log     *syncedLog
	clk     *clock.Fake
	files   chan string
	changes chan struct{}
	hup     chan os.Signal
	idles   atomic.Int64 // how often the daemon waited for work
	loads   atomic.Int32
	mu      sync.Mutex
	notes   []string
	socks   []audit.Socket
	cancel  context.CancelFunc
	done    chan error
}

func newHarness(t *testing.T, initial string) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), tables: nft.NewFake(), sys: sysctl.NewFake(), store: &state.Mem{Holder: 4242},
		guard: &bindguard.Fake{}, log: &syncedLog{}, clk: clock.NewFake(),
		files: make(chan string), changes: make(chan struct{}), hup: make(chan os.Signal),
		done: make(chan error, 1)}
	h.e = &engine.Engine{Host: engine.Host{Tables: h.tables, Sysctls: h.sys, State: h.store, Lock: h.store, Guard: h.guard,
		Sockets: func() ([]audit.Socket, error) { h.mu.Lock(); defer h.mu.Unlock(); return h.socks, nil }}}
	h.path = filepath.Join(h.dir, "policy.yaml")
	h.write(initial)
	return h
}

func (h *harness) config() Config {
	return Config{
		Path: h.path, Engine: h.e, Log: slog.New(slog.NewTextHandler(h.log, nil)), Clock: h.clk,
		Load: func(path string) (*policy.Policy, *model.Resolved, error) {
			h.loads.Add(1)
			r, p, err := resolve.Load(path, users)
			return p, r, err
		},
		KernelChanges: h.changes, Reload: h.hup, FileEvents: h.files,
		Notify:   func(s string) { h.mu.Lock(); h.notes = append(h.notes, s); h.mu.Unlock() },
		Debounce: 10 * time.Millisecond, Recheck: time.Hour, AuditInterval: -1,
		Idle: func() { h.idles.Add(1) },
	}
}

func (h *harness) start(tweak func(*Config)) *harness {
	h.t.Helper()
	cfg := h.config()
	if tweak != nil {
		tweak(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- d.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); <-h.done })
	if cfg.Idle != nil {
		h.waitIdles(1)
	}
	return h
}

func start(t *testing.T, initial string, tweak func(*Config)) *harness {
	return newHarness(t, initial).start(tweak)
}

// waitIdles waits until the daemon has waited for work n times in all.
func (h *harness) waitIdles(n int64) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.idles.Load() < n {
		select {
		case err := <-h.done:
			h.done <- err
			h.t.Fatalf("the daemon stopped: %v\n%s", err, h.log.String())
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the daemon did not settle in 5s:\n%s", h.log.String())
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// step hands the daemon one thing to do (a send it receives) and waits
// until it has handled it.
func (h *harness) step(send func()) {
	h.t.Helper()
	n := h.idles.Load()
	send()
	h.waitIdles(n + 1)
}

// advance moves the clock and waits until the daemon has handled every
// timer that fired.
func (h *harness) advance(d time.Duration) {
	h.t.Helper()
	n := h.idles.Load()
	fired := h.clk.Advance(d)
	h.waitIdles(n + int64(fired))
}

// edit replaces the policy the way editors do, a new file renamed over,
// and tells the daemon.
func (h *harness) edit(text string) {
	h.t.Helper()
	h.write(text)
	h.step(func() { h.files <- h.path })
}

func (h *harness) write(text string) {
	h.t.Helper()
	tmp := filepath.Join(h.dir, ".policy.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) table() string {
	h.t.Helper()
	rs, err := h.tables.Read(model.DefaultTable)
	if err != nil {
		h.t.Fatal(err)
	}
	return rs.String()
}

func (h *harness) logHas(t *testing.T, substr string, n int) {
	t.Helper()
	if got := strings.Count(h.log.String(), substr); got != n {
		t.Errorf("log says %q %d times, want %d:\n%s", substr, got, n, h.log.String())
	}
}

func TestStartApplies(t *testing.T) {
	h := start(t, policyA, nil)
	if !strings.Contains(h.table(), `tcp . 8080 comment "web"`) {
		t.Fatalf("table after start:\n%s", h.table())
	}
	if h.tables.Replaces != 1 {
		t.Errorf("%d replaces at start, want 1", h.tables.Replaces)
	}
	h.logHas(t, "msg=applied", 1)
}

// TestDebounce: a burst of file events is one reload, after the quiet time.
func TestDebounce(t *testing.T) {
	h := start(t, policyA, nil)
	h.write(strings.Replace(policyA, "8080]", "8080, 9000]", 1))
	before := h.loads.Load()
	for range 10 {
		h.step(func() { h.files <- h.path })
		h.clk.Advance(5 * time.Millisecond) // less than the debounce each time
	}
	if n := h.loads.Load(); n != before {
		t.Fatalf("reloaded %d times during the burst", n-before)
	}
	h.advance(10 * time.Millisecond)
	if n := h.loads.Load() - before; n != 1 {
		t.Errorf("%d reloads for a burst of 10 events, want 1", n)
	}
	if !strings.Contains(h.table(), "tcp . 9000") {
		t.Errorf("edit not applied:\n%s", h.table())
	}
	// Unrelated files in the directory are ignored.
	h.step(func() { h.files <- filepath.Join(h.dir, ".policy.yaml.swp") })
	h.advance(time.Second)
	if n := h.loads.Load() - before; n != 1 {
		t.Errorf("an editor's swap file caused a reload")
	}
}

// TestCollectAfterReload: a reload, valid or not, that leaves the heap
// near the collector's trigger is followed by a collection in the
// background, and a reload while one still runs starts no second one; one
// that leaves room starts none.
func TestCollectAfterReload(t *testing.T) {
	started := make(chan struct{}, 10)
	release := make(chan struct{})
	var allocated, room atomic.Uint64
	room.Store(1 << 20)
	h := start(t, policyA, func(c *Config) {
		c.Collect = func() { started <- struct{}{}; <-release }
		// Each reading 1 MiB more allocated; the trigger (at 70 of 100
		// MiB) is room beyond the objects.
		c.Heap = func() Heap {
			return Heap{Allocated: allocated.Add(1 << 20), Objects: 70<<20 - room.Load(), Live: 0, Goal: 100 << 20}
		}
	})
	waitStarted := func(what string) {
		t.Helper()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("no collection after %s", what)
		}
	}
	waitStarted("the start")
	h.edit(strings.Replace(policyA, "8080", "8081", 1))
	h.advance(10 * time.Millisecond)
	if !strings.Contains(h.table(), "tcp . 8081") {
		t.Fatalf("the edit was not applied while a collection ran:\n%s", h.table())
	}
	select {
	case <-started:
		t.Fatal("a second collection started while the first ran")
	case <-time.After(50 * time.Millisecond):
	}
	release <- struct{}{} // the first ends
	h.edit(strings.Replace(policyA, "8080", "0", 1))
	h.advance(10 * time.Millisecond)
	waitStarted("a rejected reload")
	release <- struct{}{}
	room.Store(3 << 20) // more than two reloads of 1 MiB
	h.edit(strings.Replace(policyA, "8080", "8082", 1))
	h.advance(10 * time.Millisecond)
	select {
	case <-started:
		t.Fatal("a collection ran while the heap had room for two more reloads")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
}

// TestHeapDue: when a collection is due, from the runtime's figures.
func TestHeapDue(t *testing.T) {
	const M = 1 << 20
	for _, c := range []struct {
		h         Heap
		perReload uint64
		want      bool
	}{
		{Heap{Objects: 40 * M, Live: 40 * M, Goal: 80 * M}, 6 * M, false}, // trigger at 68: room for 4
		{Heap{Objects: 58 * M, Live: 40 * M, Goal: 80 * M}, 6 * M, true},  // 58 + 12 >= 68
		{Heap{Objects: 56 * M, Live: 40 * M, Goal: 80 * M}, 6 * M, true},  // exactly at it
		{Heap{Objects: 55 * M, Live: 40 * M, Goal: 80 * M}, 6 * M, false}, // 55 + 12 < 68
		{Heap{Objects: 79 * M, Live: 40 * M, Goal: 80 * M}, 0, true},      // past the trigger
		{Heap{Objects: 60 * M, Live: 40 * M, Goal: 40 * M}, 6 * M, false}, // no figures
	} {
		if got := c.h.due(c.perReload); got != c.want {
			t.Errorf("%+v due after reloads of %d: %v, want %v", c.h, c.perReload, got, c.want)
		}
	}
	// The runtime's figures are read, and its allocation count moves.
	before := readHeap()
	sink = make([]byte, 4*M)
	after := readHeap()
	if before.Goal == 0 || before.Objects == 0 || after.Allocated < before.Allocated+4*M {
		t.Errorf("heap figures %+v, then %+v after allocating 4 MiB", before, after)
	}
}

var sink []byte

// TestLastGoodKept: an invalid policy changes nothing and is logged once
// with its position; a later valid one applies.
func TestLastGoodKept(t *testing.T) {
	h := start(t, policyA, nil)
	good := h.table()
	h.edit(strings.Replace(policyA, "8080", "0", 1))
	h.advance(10 * time.Millisecond)
	h.logHas(t, "policy rejected; still enforcing the last good policy", 1)
	h.logHas(t, "policy.yaml:5:13: reservations[0].ports[0]: port 0", 1)
	if h.table() != good {
		t.Fatal("an invalid policy changed the table")
	}
	h.step(func() { h.files <- h.path }) // the same bad content again: not logged again
	h.advance(10 * time.Millisecond)
	h.logHas(t, "policy rejected", 1)
	h.edit(strings.Replace(policyA, "8080", "8081", 1))
	h.advance(10 * time.Millisecond)
	if !strings.Contains(h.table(), "tcp . 8081") {
		t.Fatalf("valid policy after an invalid one not applied:\n%s", h.table())
	}
}

// TestDeltaVersusReplace: membership changes are element deltas; a
// settings change replaces the table.
func TestDeltaVersusReplace(t *testing.T) {
	h := start(t, policyA, nil)
	h.edit(strings.Replace(policyA, "users: [alice]", "users: [alice, bob]", 1))
	h.advance(10 * time.Millisecond)
	if h.tables.Deltas != 1 || h.tables.Replaces != 1 {
		t.Errorf("after a membership change: %d deltas, %d replaces; want 1, 1", h.tables.Deltas, h.tables.Replaces)
	}
	h.edit(strings.Replace(policyA, "off }", "off, allow_root: false }", 1))
	h.advance(10 * time.Millisecond)
	if h.tables.Replaces != 2 {
		t.Errorf("after a settings change: %d replaces, want 2", h.tables.Replaces)
	}
}

// TestDriftRepaired: when someone edits or deletes the table, a kernel
// change notification brings it back, and the repair is logged.
func TestDriftRepaired(t *testing.T) {
	h := start(t, policyA, nil)
	good := h.table()
	h.tables.Tamper(model.DefaultTable, func(rs *compiler.Ruleset) *compiler.Ruleset {
		rs.Sets[0].Elements = append(rs.Sets[0].Elements, compiler.Element{Proto: model.TCP, Ports: model.Port(22)})
		return rs
	})
	h.step(func() { h.changes <- struct{}{} })
	h.advance(10 * time.Millisecond)
	h.logHas(t, "drift repaired", 1)
	if h.table() != good {
		t.Fatalf("table after repair:\n%s\nwant:\n%s", h.table(), good)
	}
	h.tables.Tamper(model.DefaultTable, func(*compiler.Ruleset) *compiler.Ruleset { return nil })
	h.step(func() { h.changes <- struct{}{} })
	h.advance(10 * time.Millisecond)
	h.logHas(t, "drift repaired", 2)
	if h.table() != good {
		t.Fatal("deleted table not restored")
	}
}

// TestOwnCommitsAreQuiet: the notification of the daemon's own commit is
// recognised by its generation and reads nothing.
func TestOwnCommitsAreQuiet(t *testing.T) {
	h := start(t, policyA, nil)
	h.edit(strings.Replace(policyA, "8080]", "8080, 9000]", 1))
	h.advance(10 * time.Millisecond)
	reads := h.tables.Reads
	h.step(func() { h.changes <- struct{}{} }) // the notification of that commit
	h.advance(10 * time.Millisecond)
	if h.tables.Reads != reads || strings.Contains(h.log.String(), "drift") {
		t.Errorf("the daemon's own commit made it read the table (%d reads, was %d)", h.tables.Reads, reads)
	}
	// A periodic check reads nothing either while the generation is ours.
	h2 := start(t, policyA, func(c *Config) { c.Recheck = time.Minute })
	reads = h2.tables.Reads
	h2.advance(time.Minute)
	if h2.tables.Reads != reads {
		t.Errorf("a periodic check read an unchanged table")
	}
}

func TestSIGHUPReloads(t *testing.T) {
	h := start(t, policyA, nil)
	before := h.loads.Load()
	h.step(func() { h.hup <- os.Interrupt })
	if h.loads.Load() != before+1 {
		t.Fatal("SIGHUP did not reload")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	got := strings.Join(h.notes, "|")
	if !strings.HasPrefix(got, "READY=1\nSTATUS=enforcing 1 reservations") || !strings.Contains(got, "RELOADING=1|READY=1\nSTATUS=") {
		t.Errorf("sd_notify sequence %q, want READY with STATUS, then RELOADING, READY", got)
	}
}

// TestStatusAfterEveryReload: systemd's STATUS follows file reloads too.
func TestStatusAfterEveryReload(t *testing.T) {
	h := start(t, policyA, nil)
	h.edit(strings.Replace(policyA, "8080]", "8080, 9000]", 1) + "  - name: two\n    ports: [9100]\n    owner: { users: [bob] }\n")
	h.advance(10 * time.Millisecond)
	h.mu.Lock()
	last := h.notes[len(h.notes)-1]
	h.mu.Unlock()
	if last != "READY=1\nSTATUS=enforcing 2 reservations from "+h.path+" (bind guard off)" {
		t.Errorf("last notification %q", last)
	}
}

func TestStopLeavesOrRemoves(t *testing.T) {
	h := start(t, policyA, nil)
	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	h.done <- nil // for the cleanup
	if _, err := h.tables.Read(model.DefaultTable); err != nil {
		t.Errorf("rules gone after a plain stop: %v", err)
	}
	h2 := start(t, policyA, func(c *Config) { c.RemoveOnExit = true })
	h2.cancel()
	if err := <-h2.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	h2.done <- nil
	if _, err := h2.tables.Read(model.DefaultTable); err == nil {
		t.Error("table still there after a stop with RemoveOnExit")
	}
}

// TestNoGoodPolicyAtStart: the daemon starts with an invalid file, stays
// up, and applies the first valid one.
func TestNoGoodPolicyAtStart(t *testing.T) {
	h := start(t, "version: 3\n", nil)
	h.logHas(t, "policy rejected; no policy enforced yet", 1)
	h.edit(policyA)
	h.advance(10 * time.Millisecond)
	if !strings.Contains(h.table(), "8080") {
		t.Fatal("first valid policy not applied")
	}
}

// TestSecondDaemonRefused: a namespace has one manager; a second daemon
// stops at once, naming the first one's pid.
func TestSecondDaemonRefused(t *testing.T) {
	h := start(t, policyA, nil)
	d, err := New(h.config())
	if err != nil {
		t.Fatal(err)
	}
	err = d.Run(context.Background())
	if !errors.Is(err, state.ErrLocked) || !strings.Contains(err.Error(), "pid 4242") {
		t.Errorf("second daemon: %v, want ErrLocked naming pid 4242", err)
	}
}

// TestRepeatedFailureLoggedOnce: a failure that repeats at every check is
// logged once, then again only after errorRepeat, and its end is logged.
func TestRepeatedFailureLoggedOnce(t *testing.T) {
	h := newHarness(t, strings.Replace(policyA, "bind_guard: off", "bind_guard: off, unprivileged_port_start: 80", 1))
	h.sys.Fail = map[string]error{"net.ipv4.ip_unprivileged_port_start": errors.New("operation not permitted")}
	h.start(func(c *Config) { c.Recheck = time.Minute })
	h.logHas(t, "applied only in part", 1)
	for range 5 {
		h.advance(time.Minute)
	}
	h.logHas(t, "applied only in part", 1)
	h.advance(errorRepeat)
	h.logHas(t, "applied only in part", 2)
	h.logHas(t, "repeated=", 1)
	h.mu.Lock()
	if last := h.notes[len(h.notes)-1]; !strings.Contains(last, "STATUS=FAILING: applied only in part") {
		t.Errorf("STATUS while failing: %q", last)
	}
	h.mu.Unlock()
	h.sys.Fail = nil
	h.advance(time.Minute)
	h.logHas(t, "recovered", 1)
}

// TestAuditLogsNewSquattersOnce: the periodic audit logs a squatter when it
// first appears, not at every scan.
func TestAuditLogsNewSquattersOnce(t *testing.T) {
	h := newHarness(t, policyA)
	h.start(func(c *Config) { c.AuditInterval = time.Minute })
	h.mu.Lock()
	h.socks = []audit.Socket{{Protocol: model.TCP, Port: 8080, UID: 1001, User: "bob", Inode: 42}}
	h.mu.Unlock()
	for range 3 {
		h.advance(time.Minute)
	}
	h.logHas(t, "squatter on a reserved port", 1)
}

// TestFileWatcher: with the real file watcher, an editor's rename and a
// ConfigMap's ..data symlink swap each reload the policy.
func TestFileWatcher(t *testing.T) {
	dir := t.TempDir()
	data1, data2 := filepath.Join(dir, "..2026_12_01_a"), filepath.Join(dir, "..2026_12_01_b")
	for _, d := range []string{data1, data2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(data1, "policy.yaml"), []byte(policyA), 0o644)
	os.WriteFile(filepath.Join(data2, "policy.yaml"), []byte(strings.Replace(policyA, "8080", "8090", 1)), 0o644)
	os.Symlink(filepath.Base(data1), filepath.Join(dir, "..data"))
	path := filepath.Join(dir, "policy.yaml")
	os.Symlink("..data/policy.yaml", path)

	h := newHarness(t, policyA)
	h.path = path
	h.start(func(c *Config) { c.FileEvents, c.Clock, c.Idle = nil, clock.Real{}, nil })
	waitFor := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			rs, err := h.tables.Read(model.DefaultTable)
			if err == nil && strings.Contains(rs.String(), what) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("table does not hold %q after 5s (%v):\n%s", what, err, h.log.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("tcp . 8080")
	// The ConfigMap update: a new ..data link renamed over the old one.
	os.Symlink(filepath.Base(data2), filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitFor("tcp . 8090")
}

// TestRelevant: the events that may change the policy are the main file,
// policy.d and its *.yaml drop-ins (and Kubernetes' ..data swaps); editors'
// and tools' temporary files are not.
func TestRelevant(t *testing.T) {
	d := &Daemon{cfg: Config{Path: "/etc/portfw/policy.yaml", DropIns: "/etc/portfw/policy.d", WatchFiles: []string{"/etc/passwd"}}}
	for name, want := range map[string]bool{
		"/etc/portfw/policy.yaml":                    true,
		"/etc/portfw/..data":                         true,
		"/etc/portfw/policy.d":                       true,
		"/etc/portfw/policy.d/50-nginx.yaml":         true,
		"/etc/portfw/policy.d/..data":                true,
		"/etc/portfw/policy.d/.50-nginx.yaml.swp":    false,
		"/etc/portfw/policy.d/50-nginx.yaml~":        false,
		"/etc/portfw/policy.d/.ansible_tmpab12.yaml": false,
		"/etc/portfw/policy.d/README":                false,
		"/etc/portfw/policy.d/50-web.yml":            true, // reloaded to say it must be renamed
		"/etc/portfw/other.yaml":                     false,
		"/etc/passwd":                                true,
		"/etc/shadow":                                false,
	} {
		if got := d.relevant(name); got != want {
			t.Errorf("relevant(%s) = %v, want %v", name, got, want)
		}
	}
}

// A drop-in that is a symbolic link to a package's file: the target's
// directory is watched and a replacement of the target is relevant.
func TestSymlinkedDropIn(t *testing.T) {
	root := t.TempDir()
	etc, pkg := filepath.Join(root, "etc"), filepath.Join(root, "usr", "share", "app")
	for _, d := range []string{filepath.Join(etc, "policy.d"), pkg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(pkg, "portfw.yaml")
	os.WriteFile(target, []byte("version: 1\n"), 0o644)
	if err := os.Symlink(target, filepath.Join(etc, "policy.d", "60-app.yaml")); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{cfg: Config{Path: filepath.Join(etc, "policy.yaml"), DropIns: filepath.Join(etc, "policy.d")}}
	if !slices.Contains(d.watchDirs(), pkg) {
		t.Errorf("watchDirs %v lack the link target's directory %s", d.watchDirs(), pkg)
	}
	for name, want := range map[string]bool{target: true, filepath.Join(pkg, "other.yaml"): false} {
		if got := d.relevant(name); got != want {
			t.Errorf("relevant(%s) = %v, want %v", name, got, want)
		}
	}
}
