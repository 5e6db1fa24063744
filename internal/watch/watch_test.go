package watch

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
)

func TestMain(m *testing.M) {
	// engine.Sync records sysctl state; keep it out of /run. The policies
	// here never change a sysctl (threshold "keep", no ephemeral ports).
	dir, _ := os.MkdirTemp("", "portfw-watch-state-")
	os.Setenv("PORTFW_STATE_DIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const policyA = `version: 1
settings: { unprivileged_port_start: keep }
reservations:
  - name: web
    ports: [8080]
    protocols: [tcp]
    owner: { users: [alice] }
`

var users = policy.Static{Users: map[string]uint32{"alice": 1000, "bob": 1001}}

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
	t     *testing.T
	dir   string
	path  string
	fake  *nft.Fake
	log   *syncedLog
	syncs atomic.Int32
	// fromMemory counts syncs that trusted the daemon's own record of the
	// table instead of reading it back.
	fromMemory atomic.Int32
	changes    chan struct{}
	hup        chan os.Signal
	cancel     context.CancelFunc
	done       chan error
}

func start(t *testing.T, initial string, tweak func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), fake: nft.NewFake(), log: &syncedLog{},
		changes: make(chan struct{}, 1), hup: make(chan os.Signal, 1), done: make(chan error, 1)}
	h.path = filepath.Join(h.dir, "policy.yaml")
	h.write(initial)
	cfg := Config{
		Path: h.path, Kernel: h.fake, Resolver: users, Log: slog.New(slog.NewTextHandler(h.log, nil)),
		KernelChanges: h.changes, Reload: h.hup, Debounce: 20 * time.Millisecond, Recheck: time.Hour,
		AuditInterval: -1, InsecurePerms: true, UserDB: []string{},
		Sync: func(k nft.Kernel, p *engine.Prepared, cur *compiler.Ruleset, known bool) (engine.Result, error) {
			h.syncs.Add(1)
			if known {
				h.fromMemory.Add(1)
				return engine.SyncFrom(k, p, cur, false)
			}
			return engine.Sync(k, p, false)
		},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-h.done })
	h.waitLog("reason=start")
	return h
}

// write replaces the policy the way editors do: a new file renamed over.
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

func (h *harness) waitLog(substr string) { h.t.Helper(); h.waitLogN(substr, 1) }

// waitLogN waits until the log says substr n times.
func (h *harness) waitLogN(substr string, n int) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(h.log.String(), substr) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("log did not say %q %d times:\n%s", substr, n, h.log.String())
}

func (h *harness) table() string {
	h.t.Helper()
	rs, err := h.fake.Read(policy.DefaultTable)
	if err != nil {
		h.t.Fatal(err)
	}
	return rs.String()
}

func TestStartApplies(t *testing.T) {
	h := start(t, policyA, nil)
	if !strings.Contains(h.table(), `tcp . 8080 comment "web"`) {
		t.Fatalf("table after start:\n%s", h.table())
	}
	if h.fake.Applies != 1 {
		t.Errorf("%d full applies at start, want 1", h.fake.Applies)
	}
}

// TestDebounce: a burst of writes is one reload.
func TestDebounce(t *testing.T) {
	h := start(t, policyA, nil)
	before := h.syncs.Load()
	for i := 0; i < 10; i++ {
		h.write(strings.Replace(policyA, "8080]", "8080, 9000]", 1))
	}
	h.waitLog(`reason="file changed"`)
	time.Sleep(100 * time.Millisecond)
	if n := h.syncs.Load() - before; n != 1 {
		t.Errorf("%d syncs for a burst of 10 writes, want 1", n)
	}
}

// TestLastGoodKept: an invalid policy changes nothing and is logged with
// its position; a later valid one applies.
func TestLastGoodKept(t *testing.T) {
	h := start(t, policyA, nil)
	good := h.table()
	h.write(strings.Replace(policyA, "8080", "0", 1))
	h.waitLog("policy rejected; still enforcing the last good policy")
	h.waitLog("policy.yaml:5:13: reservations[0].ports[0]: port 0")
	if h.table() != good {
		t.Fatal("an invalid policy changed the table")
	}
	h.write(strings.Replace(policyA, "8080", "8081", 1))
	h.waitLog("mode=delta")
	if !strings.Contains(h.table(), "tcp . 8081") {
		t.Fatalf("valid policy after an invalid one not applied:\n%s", h.table())
	}
}

// TestDeltaVersusReplace: membership changes are element deltas; a
// settings change replaces the table.
func TestDeltaVersusReplace(t *testing.T) {
	h := start(t, policyA, nil)
	h.write(strings.Replace(policyA, "users: [alice]", "users: [alice, bob]", 1))
	h.waitLog("mode=delta")
	if h.fake.Deltas != 1 || h.fake.Applies != 1 {
		t.Errorf("after a membership change: %d deltas, %d applies; want 1, 1", h.fake.Deltas, h.fake.Applies)
	}
	h.write(strings.Replace(policyA, "keep }", "keep, allow_root: false }", 1))
	h.waitLogN("mode=replace reservations", 2)
	if h.fake.Applies != 2 {
		t.Errorf("after a settings change: %d applies, want 2", h.fake.Applies)
	}
}

// TestDriftRepaired: when someone edits or deletes the table, a kernel
// change notification brings it back, and the repair is logged.
func TestDriftRepaired(t *testing.T) {
	h := start(t, policyA, nil)
	good := h.table()
	h.fake.Tamper(policy.DefaultTable, func(rs *compiler.Ruleset) {
		rs.Sets[0].Elements = append(rs.Sets[0].Elements, compiler.Element{Proto: policy.TCP, Ports: policy.PortRange{Lo: 22, Hi: 22}})
	})
	h.changes <- struct{}{}
	h.waitLog("drift repaired")
	if h.table() != good {
		t.Fatalf("table after repair:\n%s\nwant:\n%s", h.table(), good)
	}
	h.fake.Remove(policy.DefaultTable)
	h.changes <- struct{}{}
	h.waitLogN("drift repaired", 2)
	if h.table() != good {
		t.Fatal("deleted table not restored")
	}
}

// TestReloadTrustsOwnRecordUntilOthersCommit: a reload after the daemon's
// own apply does not read the table back; after another process commits
// (a change notification) it does.
func TestReloadTrustsOwnRecordUntilOthersCommit(t *testing.T) {
	h := start(t, policyA, nil)
	h.write(strings.Replace(policyA, "8080]", "8080, 9000]", 1))
	h.waitLog("mode=delta")
	if h.fromMemory.Load() != 1 {
		t.Fatalf("reload after our own apply: %d syncs from memory, want 1", h.fromMemory.Load())
	}
	h.fake.Tamper(policy.DefaultTable, func(rs *compiler.Ruleset) { rs.Sets[0].Elements = rs.Sets[0].Elements[:1] })
	h.changes <- struct{}{}
	h.waitLog("drift repaired")
	if h.fromMemory.Load() != 1 {
		t.Errorf("drift check trusted memory instead of reading the table")
	}
	if !strings.Contains(h.table(), "tcp . 9000") {
		t.Errorf("drift not repaired:\n%s", h.table())
	}
}

// TestOwnTransactionsAreQuiet: the notification of portfw's own apply
// finds the table in sync and changes nothing.
func TestOwnTransactionsAreQuiet(t *testing.T) {
	h := start(t, policyA, nil)
	before := h.fake.Applies + h.fake.Deltas
	h.changes <- struct{}{}
	time.Sleep(100 * time.Millisecond)
	if n := h.fake.Applies + h.fake.Deltas; n != before || strings.Contains(h.log.String(), "drift") {
		t.Errorf("a change notification with nothing changed caused %d transactions", n-before)
	}
}

func TestSIGHUPReloads(t *testing.T) {
	var notes []string
	var mu sync.Mutex
	h := start(t, policyA, func(c *Config) {
		c.Notify = func(s string) { mu.Lock(); notes = append(notes, s); mu.Unlock() }
	})
	h.hup <- os.Interrupt
	h.waitLog("reason=SIGHUP")
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	got := strings.Join(notes, "|")
	if !strings.HasPrefix(got, "READY=1") || !strings.Contains(got, "RELOADING=1|READY=1") {
		t.Errorf("sd_notify sequence %q, want READY=1 then RELOADING=1, READY=1", got)
	}
}

func TestStopLeavesOrRemoves(t *testing.T) {
	h := start(t, policyA, nil)
	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	h.done <- nil // for the cleanup
	if _, err := h.fake.Read(policy.DefaultTable); err != nil {
		t.Errorf("rules gone after a plain stop: %v", err)
	}

	h2 := start(t, policyA, func(c *Config) { c.RemoveOnExit = true })
	h2.cancel()
	if err := <-h2.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	h2.done <- nil
	if _, err := h2.fake.Read(policy.DefaultTable); err == nil {
		t.Error("table still there after a stop with RemoveOnExit")
	}
}

// TestNoGoodPolicyAtStart: the daemon starts with an invalid file, stays
// up, and applies the first valid one.
func TestNoGoodPolicyAtStart(t *testing.T) {
	h := &harness{t: t}
	_ = h
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	os.WriteFile(path, []byte("version: 3\n"), 0o644)
	fake := nft.NewFake()
	log := &syncedLog{}
	d, err := New(Config{Path: path, Kernel: fake, Resolver: users, Log: slog.New(slog.NewTextHandler(log, nil)),
		Debounce: 10 * time.Millisecond, AuditInterval: -1, InsecurePerms: true, UserDB: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	hh := &harness{t: t, dir: dir, path: path, log: log, fake: fake}
	hh.waitLog("no policy enforced yet")
	hh.write(policyA)
	hh.waitLog("msg=applied")
	if !strings.Contains(hh.table(), "8080") {
		t.Fatal("first valid policy not applied")
	}
}

// TestAuditLogsNewSquattersOnce: the periodic audit logs a squatter when
// it first appears, not at every scan.
func TestAuditLogsNewSquattersOnce(t *testing.T) {
	report := audit.Report{Findings: []audit.Finding{{Reservation: "web", Protocol: policy.TCP, Port: 8080, UID: 1001, User: "bob", Verdict: audit.Squatter, Inode: 42}}}
	h := start(t, policyA, func(c *Config) {
		c.AuditInterval = 10 * time.Millisecond
		c.Scan = func(*policy.Resolved) (audit.Report, error) { return report, nil }
	})
	h.waitLog("squatter on a reserved port")
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(h.log.String(), "squatter on a reserved port"); n != 1 {
		t.Errorf("squatter logged %d times over several scans, want once", n)
	}
}
