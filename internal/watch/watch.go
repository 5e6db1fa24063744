// Package watch is portfw's daemon: it keeps the kernel equal to a policy
// file. It applies at start, reloads when the file (or the user database
// its names resolve through) changes or on SIGHUP, and repairs drift when
// anyone else changes portfw's table. An invalid policy never replaces a
// good one: the last good policy stays enforced and the error is logged.
//
// All kernel work goes through engine.Sync, so a reload that only changes
// membership is an element delta and anything else one atomic replace.
package watch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
)

// Config is what the daemon needs; zero durations take the defaults.
type Config struct {
	Path     string
	Kernel   nft.Kernel
	Resolver policy.Resolver
	Log      *slog.Logger
	// KernelChanges signals that some nftables transaction committed
	// (nft.WatchChanges); nil leaves drift to the periodic recheck.
	KernelChanges <-chan struct{}
	// Reload receives SIGHUP.
	Reload <-chan os.Signal
	// Notify sends a systemd notification ("READY=1"); may be nil.
	Notify func(state string)

	Debounce      time.Duration // quiet time before acting on a burst of events; 10ms
	Recheck       time.Duration // periodic comparison with the kernel, a fallback; 30s
	AuditInterval time.Duration // how often to look for squatters; 60s; < 0 turns it off
	InsecurePerms bool          // accept a policy writable by others than root
	RemoveOnExit  bool          // remove the table and restore sysctls on SIGTERM
	// UserDB are the files names resolve through; a change re-resolves.
	UserDB []string
	// BindGuardCgroup narrows the bind guard (settings.bind_guard) to a
	// cgroup v2 subtree; empty is the whole hierarchy.
	BindGuardCgroup string

	// Sync makes the kernel match p: engine.SyncFrom(cur) when known,
	// else engine.Sync (which reads the table). Scan is audit.Scan. Tests
	// replace them.
	Sync func(k nft.Kernel, p *engine.Prepared, cur *compiler.Ruleset, known bool) (engine.Result, error)
	Scan func(*policy.Resolved) (audit.Report, error)
}

// Daemon is one running watch.
type Daemon struct {
	cfg      Config
	good     *policy.Resolved // last good policy; nil until one loads
	goodPol  *policy.Policy
	rejected [sha256.Size]byte // the last rejected content, logged once
	tracker  audit.Tracker
	// applied is the table as this daemon last made it, trusted (known)
	// until another process commits to nftables: then, and for periodic
	// checks, the table is read back instead.
	applied *compiler.Ruleset
	known   bool
	// notified is whether change notifications arrive at all; without
	// them nothing tells the daemon about others' commits, so it always
	// reads the table.
	notified bool
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Daemon, error) {
	if cfg.Path == "" || cfg.Kernel == nil || cfg.Log == nil {
		return nil, errors.New("watch: Path, Kernel and Log are required")
	}
	if cfg.Resolver == nil {
		cfg.Resolver = policy.System{}
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 10 * time.Millisecond
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = 30 * time.Second
	}
	if cfg.AuditInterval == 0 {
		cfg.AuditInterval = time.Minute
	}
	if cfg.UserDB == nil {
		cfg.UserDB = []string{"/etc/passwd", "/etc/group"}
	}
	if cfg.Sync == nil {
		cfg.Sync = func(k nft.Kernel, p *engine.Prepared, cur *compiler.Ruleset, known bool) (engine.Result, error) {
			if known {
				return engine.SyncFrom(k, p, cur, false)
			}
			return engine.Sync(k, p, false)
		}
	}
	if cfg.Scan == nil {
		cfg.Scan = audit.Scan
	}
	if cfg.Notify == nil {
		cfg.Notify = func(string) {}
	}
	return &Daemon{cfg: cfg, notified: cfg.KernelChanges != nil}, nil
}

// Run applies the policy and keeps the kernel in step until ctx ends. It
// returns nil on a normal stop, leaving the rules in place (the kernel
// keeps enforcing) unless RemoveOnExit.
func (d *Daemon) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy: %w", err)
	}
	defer w.Close()
	for _, dir := range d.watchDirs() {
		if err := w.Add(dir); err != nil {
			return fmt.Errorf("watch %s: %w", dir, err)
		}
	}

	d.reload("start")
	d.notifyReady()

	// One timer per kind of pending work, each debounced: a burst of
	// file events (an editor's rename dance, a ConfigMap's symlink swap)
	// is one reload, and our own transaction's notification one check.
	reloadT := stoppedTimer()
	checkT := stoppedTimer()
	recheck := time.NewTicker(d.cfg.Recheck)
	defer recheck.Stop()
	var auditC <-chan time.Time
	if d.cfg.AuditInterval > 0 {
		t := time.NewTicker(d.cfg.AuditInterval)
		defer t.Stop()
		auditC = t.C
		d.audit()
	}
	changes := d.cfg.KernelChanges
	for {
		select {
		case <-ctx.Done():
			return d.stop()
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch policy: file watcher closed")
			}
			if d.relevant(ev) {
				reloadT.Reset(d.cfg.Debounce)
			}
		case err := <-w.Errors:
			// An overflowed inotify queue loses events: reload to be sure.
			d.cfg.Log.Warn("file watcher error; reloading to be safe", "err", err)
			reloadT.Reset(d.cfg.Debounce)
		case <-reloadT.C:
			d.reload("file changed")
		case <-d.cfg.Reload:
			d.cfg.Notify("RELOADING=1")
			d.reload("SIGHUP")
			d.notifyReady()
		case _, ok := <-changes:
			if !ok {
				d.cfg.Log.Warn("nftables change notifications stopped; drift is now caught by the periodic check", "every", d.cfg.Recheck)
				changes, d.notified, d.known = nil, false, false
				continue
			}
			d.known = false
			checkT.Reset(d.cfg.Debounce)
		case <-checkT.C:
			d.enforce("kernel changed")
		case <-recheck.C:
			d.known = false
			d.enforce("periodic check")
		case <-auditC:
			d.audit()
		}
	}
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// watchDirs are the directories to watch: editors replace files by
// rename and Kubernetes swaps a ..data symlink, so the file itself is
// never the thing to watch.
func (d *Daemon) watchDirs() []string {
	dirs := []string{filepath.Dir(d.cfg.Path)}
	if real, err := filepath.EvalSymlinks(d.cfg.Path); err == nil {
		dirs = append(dirs, filepath.Dir(real))
	}
	for _, f := range d.cfg.UserDB {
		dirs = append(dirs, filepath.Dir(f))
	}
	seen := map[string]bool{}
	var out []string
	for _, dir := range dirs {
		if abs, err := filepath.Abs(dir); err == nil && !seen[abs] {
			seen[abs] = true
			if _, err := os.Stat(abs); err == nil {
				out = append(out, abs)
			}
		}
	}
	return out
}

// relevant picks the events that can change what the policy means: the
// policy file by name, Kubernetes' ..data swaps, the file a symlinked
// policy points to, and the user database. Editor swap files are not.
func (d *Daemon) relevant(ev fsnotify.Event) bool {
	name := filepath.Base(ev.Name)
	if ev.Name == d.cfg.Path || name == filepath.Base(d.cfg.Path) || strings.HasPrefix(name, "..") {
		return true
	}
	if real, err := filepath.EvalSymlinks(d.cfg.Path); err == nil && ev.Name == real {
		return true
	}
	for _, f := range d.cfg.UserDB {
		if ev.Name == f {
			return true
		}
	}
	return false
}

// reload reads the policy; a valid one becomes the good one and is
// enforced, an invalid one is logged and changes nothing.
func (d *Daemon) reload(reason string) {
	data, err := os.ReadFile(d.cfg.Path)
	if err == nil && !d.cfg.InsecurePerms {
		err = policy.CheckPerms(d.cfg.Path)
	}
	var res *policy.Resolved
	var pol *policy.Policy
	if err == nil {
		res, pol, err = engine.Load(d.cfg.Path, d.cfg.Resolver)
	}
	if err != nil {
		h := sha256.Sum256(append(data, err.Error()...))
		if h != d.rejected || reason == "SIGHUP" {
			d.rejected = h
			state := "no policy enforced yet"
			if d.good != nil {
				state = fmt.Sprintf("still enforcing the last good policy (%d reservations)", len(d.good.Reservations))
			}
			d.cfg.Log.Error("policy rejected; "+state, "reason", reason, "policy", d.cfg.Path, "errors", errorList(err))
		}
		return
	}
	d.rejected = [sha256.Size]byte{}
	d.good, d.goodPol = res, pol
	d.enforce(reason)
}

func errorList(err error) string {
	var es policy.Errors
	if errors.As(err, &es) {
		lines := make([]string, len(es))
		for i, e := range es {
			lines[i] = e.Error()
		}
		return strings.Join(lines, "; ")
	}
	return err.Error()
}

// enforce makes the kernel match the last good policy. It is how reloads
// apply and how drift is repaired: Sync reads the table back and changes
// only what differs.
func (d *Daemon) enforce(reason string) {
	if d.good == nil {
		return
	}
	start := time.Now()
	// Another process's commit may be pending on the channel while a
	// reload runs: then the table must be read, not assumed.
	select {
	case _, ok := <-d.cfg.KernelChanges:
		if ok {
			d.known = false
		}
	default:
	}
	p := engine.Prepare(d.cfg.Path, d.goodPol, d.good)
	p.BindGuardCgroup = d.cfg.BindGuardCgroup
	if p.BindGuardNote != "" && reason == "start" {
		d.cfg.Log.Warn(p.BindGuardNote)
	}
	cur := d.applied
	if cur != nil && cur.Table != p.Ruleset.Table {
		d.known = false // settings.table changed: the old table is not ours to compare
	}
	r, err := d.cfg.Sync(d.cfg.Kernel, p, cur, d.known && d.notified)
	took := time.Since(start)
	if err != nil {
		d.known = false
		d.cfg.Log.Error("apply failed; the kernel keeps its previous table", "reason", reason, "err", err)
		return
	}
	d.applied, d.known = p.Ruleset, true
	if r.InSync() {
		if reason == "start" || reason == "SIGHUP" || reason == "file changed" {
			d.cfg.Log.Info("policy in force", "reason", reason, "policy", d.cfg.Path,
				"reservations", len(d.good.Reservations), "table", p.Ruleset.Table, "changed", false)
		}
		return
	}
	attrs := []any{"reason", reason, "policy", d.cfg.Path, "table", p.Ruleset.Table, "mode", r.Mode,
		"reservations", len(d.good.Reservations),
		"added", r.Changes.Added, "removed", r.Changes.Removed, "changed", r.Changes.Changed,
		"sysctls", r.Sysctls, "bind_guard_updated", r.BindGuard, "took_ms", took.Milliseconds()}
	if reason == "kernel changed" || reason == "periodic check" {
		d.cfg.Log.Warn("drift repaired: portfw's table or sysctls were changed by someone else", attrs...)
		return
	}
	d.cfg.Log.Info("applied", attrs...)
}

// audit logs each squatter once, when it first appears.
func (d *Daemon) audit() {
	if d.good == nil {
		return
	}
	rep, err := d.cfg.Scan(d.good)
	if err != nil {
		d.cfg.Log.Warn("audit failed", "err", err)
		return
	}
	for _, f := range d.tracker.New(rep) {
		d.cfg.Log.Warn("squatter on a reserved port (its traffic is dropped)", "finding", f.String())
	}
}

func (d *Daemon) notifyReady() {
	status := "no valid policy yet; watching " + d.cfg.Path
	if d.good != nil {
		status = fmt.Sprintf("enforcing %d reservations from %s", len(d.good.Reservations), d.cfg.Path)
	}
	d.cfg.Notify("READY=1\nSTATUS=" + status)
}

func (d *Daemon) stop() error {
	d.cfg.Notify("STOPPING=1")
	if !d.cfg.RemoveOnExit {
		d.cfg.Log.Info("stopping; rules stay in place", "policy", d.cfg.Path)
		return nil
	}
	table := policy.DefaultTable
	if d.good != nil {
		table = d.good.Settings.Table
	}
	found, _, err := engine.Remove(d.cfg.Kernel, table)
	if err != nil {
		return fmt.Errorf("remove on exit: %w", err)
	}
	d.cfg.Log.Info("stopping; removed table and restored sysctls", "table", table, "found", found)
	return nil
}
