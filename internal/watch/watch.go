// Package watch is portfw's daemon: it keeps the kernel equal to a policy
// file. It applies at start, reloads when the file (or the user database
// its names resolve through) changes or on SIGHUP, and repairs drift when
// anyone else changes portfw's table. An invalid policy never replaces a
// good one: the last good policy stays enforced and the error is logged.
//
// The daemon holds its network namespace's lock for as long as it runs, so
// a second daemon (or a one-shot apply) refuses instead of fighting over
// the table. Every host effect goes through package engine; time comes from
// a clock.Clock, so tests drive the debounce and the periodic checks.
package watch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/internal/clock"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/metrics"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// Config is what the daemon needs; zero durations take the defaults.
type Config struct {
	Path string
	// DropIns is the directory of the policy's drop-ins (policy.d beside
	// Path); its *.yaml files are part of the policy. May be empty.
	DropIns string
	Engine  *engine.Engine
	// Load reads, checks and resolves the policy at path.
	Load func(path string) (*policy.Policy, *model.Resolved, error)
	Log  *slog.Logger
	// KernelChanges signals that some nftables transaction committed
	// (nft.WatchChanges); nil leaves drift to the periodic recheck.
	KernelChanges <-chan struct{}
	// ChangedBy names who made the ruleset's commits between generations
	// from and to, both excluded (the daemon's own commits), "" when it
	// cannot tell. May be nil.
	ChangedBy func(from, to uint32) string
	// Reload receives SIGHUP.
	Reload <-chan os.Signal
	// Forget drops cached user lookups; called on SIGHUP. May be nil.
	Forget func()
	// Notify sends a systemd notification ("READY=1"); may be nil.
	Notify func(state string)
	Clock  clock.Clock

	Debounce      time.Duration // quiet time before acting on a burst of events; 10ms
	Recheck       time.Duration // periodic comparison with the kernel, a fallback; 30s
	AuditInterval time.Duration // how often to look for squatters and sweep; 60s; < 0 turns it off
	RemoveOnExit  bool          // remove the table and restore sysctls on SIGTERM
	// WatchFiles are other files whose change means a reload: the user
	// database names resolve through.
	WatchFiles []string
	// FileEvents, when set, replaces watching the file system: each value
	// is the path of a file that changed (tests).
	FileEvents <-chan string
	// Idle, when set, is called each time the daemon waits for work
	// (tests).
	Idle func()
	// Observer, when set, hears of reloads, repairs, audits and the
	// daemon's state (the metrics).
	Observer Observer
	// CgroupDir, when set, returns a directory path through which the
	// root of the cgroup v2 hierarchy is reached ("/proc/self/fd/N"), or
	// "" when there is none: the daemon watches the directories in which
	// the cgroups of owners that are units and cgroups appear and vanish,
	// and reloads when one does, so a restarted unit's new cgroup id is in
	// the table within the debounce and one element delta.
	CgroupDir func() string
	// Watchdog, when not zero, is how often to tell systemd the loop is
	// alive ("WATCHDOG=1"): half of WatchdogSec=.
	Watchdog time.Duration
	// Collect collects garbage; nil is runtime.GC. The daemon runs it in
	// the background after a reload when the collector would otherwise
	// start during one of the next (see collect.go).
	Collect func()
	// Heap reads the runtime's heap figures; nil reads runtime/metrics
	// (tests).
	Heap func() Heap
}

// Observer hears what the daemon does.
type Observer interface {
	// Reloaded counts a reload: "applied", "unchanged", "invalid" or
	// "failed"; took runs from the first file event of the edit to the
	// commit (zero when there was none to time).
	Reloaded(result string, took time.Duration)
	Repaired()
	// Audited reports the squatters of a periodic audit by reservation.
	Audited(byReservation map[string]int)
	// Set reports the daemon's state after each reload and check.
	Set(metrics.State)
}

// errorRepeat is how often a failure that keeps happening is logged again.
const errorRepeat = 10 * time.Minute

// Daemon is one running watch.
type Daemon struct {
	cfg      Config
	good     *model.Resolved // last good policy; nil until one loads
	goodPol  *policy.Policy
	plan     *engine.Plan // of the last enforce that got that far
	rejected [sha256.Size]byte
	tracker  audit.Tracker
	// loadTook is how long the last load (read, parse, resolve) took.
	loadTook time.Duration
	// editAt is when the first file event of the edit being reloaded came.
	editAt time.Time
	// appliedAt is when the policy in force was last applied.
	appliedAt time.Time
	// lastGen is the ruleset generation of the daemon's own last commit
	// (or check): a change notification whose generation is still this
	// one is the daemon's own.
	lastGen uint32
	// rejectedWhy is the first error of the files on disk when they were
	// rejected at the last reload ("" when they were valid).
	rejectedWhy string
	// collecting is set while Collect runs.
	collecting atomic.Bool
	// failure is the last failure logged, so that one that repeats is
	// logged once and then every errorRepeat.
	failure     string
	failureAt   time.Time
	failureSeen int
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Daemon, error) {
	if cfg.Path == "" || cfg.Engine == nil || cfg.Load == nil || cfg.Log == nil {
		return nil, errors.New("watch: Path, Engine, Load and Log are required")
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
	if cfg.Notify == nil {
		cfg.Notify = func(string) {}
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Collect == nil {
		cfg.Collect = runtime.GC
	}
	if cfg.Heap == nil {
		cfg.Heap = readHeap
	}
	return &Daemon{cfg: cfg}, nil
}

// Run takes the namespace's lock, applies the policy and keeps the kernel
// in step until ctx ends. It returns nil on a normal stop, leaving the
// rules in place (the kernel keeps enforcing) unless RemoveOnExit.
func (d *Daemon) Run(ctx context.Context) error {
	unlock, err := d.cfg.Engine.Host.Lock.Lock(0)
	if err != nil {
		return err
	}
	defer unlock()
	events := d.cfg.FileEvents
	var watchErrs <-chan error
	var files *dirWatcher
	if events == nil {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("watch policy: %w", err)
		}
		defer w.Close()
		files = &dirWatcher{w: w, log: d.cfg.Log, inodes: map[string]uint64{}}
		if err := files.sync(d.watchDirs(), true); err != nil {
			return err
		}
		names := make(chan string)
		go func() {
			defer close(names)
			for ev := range w.Events {
				select {
				case names <- ev.Name:
				case <-ctx.Done():
					return
				}
			}
		}()
		events, watchErrs = names, w.Errors
	}

	d.reload("start")

	// The cgroups of owners: a unit's restart removes its cgroup and makes
	// a new one, with a new id, in the same parent directory.
	var cgEvents <-chan fsnotify.Event
	var cgroups *dirWatcher
	cgroupsPending := false
	if d.cfg.CgroupDir != nil && d.cfg.FileEvents == nil {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			return fmt.Errorf("watch cgroups: %w", err)
		}
		defer w.Close()
		cgroups = &dirWatcher{w: w, log: d.cfg.Log, inodes: map[string]uint64{}}
		dirs := d.cgroupDirs()
		_ = cgroups.sync(dirs, false)
		if len(dirs) > 0 {
			d.cfg.Log.Info("following the cgroups of owners that are units and cgroups", "directories", len(dirs))
		}
		cgEvents = w.Events
		// A cgroup made between the start's resolution and the watch
		// sends no event: resolve once more, now that it would.
		cgroupsPending = len(dirs) > 0
	}

	// One timer per kind of pending work, each debounced: a burst of file
	// events (an editor's rename dance, a ConfigMap's symlink swap) is one
	// reload, and a burst of kernel notifications one check.
	clk := d.cfg.Clock
	reloadT, checkT, cgroupT := clk.NewTimer(), clk.NewTimer(), clk.NewTimer()
	if cgroupsPending {
		cgroupT.Reset(time.Millisecond)
	}
	recheck := clk.NewTicker(d.cfg.Recheck)
	defer recheck.Stop()
	var auditC <-chan time.Time
	if d.cfg.AuditInterval > 0 {
		t := clk.NewTicker(d.cfg.AuditInterval)
		defer t.Stop()
		auditC = t.C()
		d.audit()
	}
	changes := d.cfg.KernelChanges
	var watchdog <-chan time.Time
	if d.cfg.Watchdog > 0 {
		t := clk.NewTicker(d.cfg.Watchdog)
		defer t.Stop()
		watchdog = t.C()
	}
	for {
		if d.cfg.Idle != nil {
			d.cfg.Idle()
		}
		select {
		case <-ctx.Done():
			return d.stop()
		case name, ok := <-events:
			if !ok {
				return errors.New("watch policy: file watcher closed")
			}
			if d.relevant(name) {
				if d.editAt.IsZero() {
					d.editAt = clk.Now()
				}
				reloadT.Reset(d.cfg.Debounce)
			}
		case ev := <-cgEvents:
			// Directories made and removed; not the files cgroupfs
			// changes inside them (cgroup.events and the like).
			if ev.Op&(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 && !strings.Contains(filepath.Base(ev.Name), "cgroup.") {
				if d.editAt.IsZero() {
					d.editAt = clk.Now()
				}
				// A unit's new cgroup waits for its id, so no debounce
				// to speak of: a restart's rmdir and mkdir come apart
				// anyway, with the old processes' exit between them.
				cgroupT.Reset(time.Millisecond)
			}
		case <-cgroupT.C():
			d.reload("cgroup changed")
			d.editAt = time.Time{}
			if cgroups != nil && cgroups.sync(d.cgroupDirs(), false) != nil {
				// A slice made meanwhile: what appeared in it before the
				// watch began is read now.
				cgroupT.Reset(d.cfg.Debounce)
			}
		case err := <-watchErrs:
			// An overflowed inotify queue loses events: reload to be sure.
			d.cfg.Log.Warn("file watcher error; reloading to be safe", "err", err)
			reloadT.Reset(d.cfg.Debounce)
		case <-reloadT.C():
			d.reload("file changed")
			d.editAt = time.Time{}
			// A policy.d made (or swapped by a ConfigMap) since: watch
			// it, and read it once more, for what was written into it
			// before the watch began.
			if files != nil && files.sync(d.watchDirs(), false) != nil {
				reloadT.Reset(d.cfg.Debounce)
			}
		case <-d.cfg.Reload:
			d.cfg.Notify("RELOADING=1")
			if d.cfg.Forget != nil {
				d.cfg.Forget()
			}
			d.reload("SIGHUP")
		case _, ok := <-changes:
			if !ok {
				d.cfg.Log.Warn("nftables change notifications stopped; drift is now caught by the periodic check", "every", d.cfg.Recheck)
				changes = nil
				continue
			}
			checkT.Reset(d.cfg.Debounce)
		case <-checkT.C():
			d.kernelChanged()
		case <-recheck.C():
			d.enforce("periodic check")
		case <-auditC:
			d.audit()
		case <-watchdog:
			// Only the loop sends it: a loop stuck in a reload or a
			// kernel call stops the pings, and systemd restarts it.
			d.cfg.Notify("WATCHDOG=1")
		}
	}
}

// watchDirs are the directories to watch: editors replace files by
// rename and Kubernetes swaps a ..data symlink, so the file itself is
// never the thing to watch. The policy's directory is watched for the
// main file (and for policy.d coming and going), policy.d for the
// drop-ins, and each one's real directory when it is a symbolic link.
func (d *Daemon) watchDirs() []string {
	dirs := []string{filepath.Dir(d.cfg.Path)}
	if real, err := filepath.EvalSymlinks(d.cfg.Path); err == nil {
		dirs = append(dirs, filepath.Dir(real))
	}
	if d.cfg.DropIns != "" {
		dirs = append(dirs, d.cfg.DropIns)
		if real, err := filepath.EvalSymlinks(d.cfg.DropIns); err == nil {
			dirs = append(dirs, real)
		}
	}
	for _, t := range d.dropInTargets() {
		dirs = append(dirs, filepath.Dir(t))
	}
	for _, f := range d.cfg.WatchFiles {
		dirs = append(dirs, filepath.Dir(f))
	}
	seen := map[string]bool{}
	var out []string
	for _, dir := range dirs {
		if abs, err := filepath.Abs(dir); err == nil && !seen[abs] {
			seen[abs] = true
			if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
				out = append(out, abs)
			}
		}
	}
	return out
}

// cgroupDirs are the cgroup directories to watch for the owners of the
// good policy: every existing ancestor of each cgroup path an owner names
// (a slice made later is seen in its parent), and for units, the parent
// of each one's cgroup, and the root and its slices while one is waiting
// (a unit may start in any slice).
func (d *Daemon) cgroupDirs() []string {
	if d.good == nil || !slices.ContainsFunc(d.good.Reservations, func(r model.Reservation) bool { return len(r.Owners.Cgroups) > 0 }) {
		return nil
	}
	root := d.cfg.CgroupDir()
	if root == "" {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(rel string) {
		dir := root + rel
		if !seen[dir] {
			seen[dir] = true
			if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
				out = append(out, dir)
			}
		}
	}
	waitingUnit := false
	for _, res := range d.good.Reservations {
		for _, c := range res.Owners.Cgroups {
			if c.Unit && c.Waiting() {
				waitingUnit = true
				continue
			}
			p := c.Path
			if p == "" {
				continue
			}
			for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
				add(strings.TrimSuffix(dir, "/"))
				if dir == "/" {
					break
				}
			}
		}
	}
	if !waitingUnit {
		return out
	}
	if f, err := os.Open(root); err == nil {
		// The root and its slices, where systemd makes a unit's cgroup.
		_ = bindguard.WalkCgroups(f, model.SliceTree, func(p string, _ uint64) {
			if model.SliceTree(p) {
				add(strings.TrimSuffix(p, "/"))
			}
		})
		f.Close()
	}
	return out
}

// dropInTargets are the real files of the drop-ins that are symbolic
// links (a package's file linked into policy.d): an update of one replaces
// the target, not the link.
func (d *Daemon) dropInTargets() []string {
	if d.cfg.DropIns == "" {
		return nil
	}
	entries, err := os.ReadDir(d.cfg.DropIns)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 || !strings.HasSuffix(e.Name(), ".yaml") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if real, err := filepath.EvalSymlinks(filepath.Join(d.cfg.DropIns, e.Name())); err == nil {
			out = append(out, real)
		}
	}
	return out
}

// dirWatcher keeps an fsnotify watch on each of a changing list of
// directories.
type dirWatcher struct {
	w      *fsnotify.Watcher
	log    *slog.Logger
	inodes map[string]uint64 // watched directory -> its inode when watched
}

// sync watches exactly dirs. A directory replaced since it was watched
// (a ConfigMap's swap leaves the path but not the directory) is watched
// anew. It returns errNewWatch when it began watching a directory, unless
// first, and an error only when first (at start, not watching the policy
// is fatal; later it is logged and retried at the next event).
func (fw *dirWatcher) sync(dirs []string, first bool) error {
	var added bool
	want := map[string]bool{}
	for _, dir := range dirs {
		want[dir] = true
		ino := inode(dir)
		if old, ok := fw.inodes[dir]; ok && old == ino {
			continue
		} else if ok {
			_ = fw.w.Remove(dir)
		}
		if err := fw.w.Add(dir); err != nil {
			if first {
				return fmt.Errorf("watch %s: %w", dir, err)
			}
			fw.log.Warn("cannot watch a policy directory; its changes are seen at the next event or check", "dir", dir, "err", err)
			continue
		}
		fw.inodes[dir] = ino
		added = true
	}
	for dir := range fw.inodes {
		if !want[dir] {
			_ = fw.w.Remove(dir)
			delete(fw.inodes, dir)
		}
	}
	if added && !first {
		return errNewWatch
	}
	return nil
}

var errNewWatch = errors.New("a directory is newly watched")

func inode(path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// relevant picks the events that can change what the policy means: the
// policy file by name, Kubernetes' ..data swaps, the file a symlinked
// policy points to, policy.d itself and its *.yaml drop-ins, and the user
// database. Editor swap files and other hidden files are not.
func (d *Daemon) relevant(name string) bool {
	base := filepath.Base(name)
	if name == d.cfg.Path || base == filepath.Base(d.cfg.Path) || strings.HasPrefix(base, "..") {
		return true
	}
	if real, err := filepath.EvalSymlinks(d.cfg.Path); err == nil && name == real {
		return true
	}
	if dir := d.cfg.DropIns; dir != "" {
		if name == dir {
			return true
		}
		parent := filepath.Dir(name)
		real, _ := filepath.EvalSymlinks(dir)
		if (parent == dir || parent == real) && (strings.HasSuffix(base, ".yaml") || strings.HasSuffix(base, ".yml")) && !strings.HasPrefix(base, ".") {
			return true
		}
	}
	for _, t := range d.dropInTargets() {
		if name == t || filepath.Dir(name) == filepath.Dir(t) && base == filepath.Base(t) {
			return true
		}
	}
	for _, f := range d.cfg.WatchFiles {
		if name == f {
			return true
		}
	}
	return false
}

// reload reads the policy; a valid one becomes the good one and is
// enforced, an invalid one is logged and changes nothing.
func (d *Daemon) reload(reason string) {
	defer d.collectAfter(d.cfg.Heap())
	start := d.cfg.Clock.Now()
	pol, res, err := d.cfg.Load(d.cfg.Path)
	d.loadTook = d.cfg.Clock.Now().Sub(start)
	if err != nil {
		data, _ := os.ReadFile(d.cfg.Path)
		h := sha256.Sum256(append(data, err.Error()...))
		if h != d.rejected || reason == "SIGHUP" {
			d.rejected = h
			state := "no policy enforced yet"
			if d.good != nil {
				state = fmt.Sprintf("still enforcing the last good policy (%d reservations)", len(d.good.Reservations))
			}
			d.cfg.Log.Error("policy rejected; "+state, "reason", reason, "policy", d.cfg.Path, "errors", errorList(err))
		}
		d.rejectedWhy = firstLine(err.Error())
		d.observe(func(o Observer) { o.Reloaded("invalid", 0) })
		d.notifyStatus()
		return
	}
	d.rejected = [sha256.Size]byte{}
	d.rejectedWhy = ""
	d.good, d.goodPol = res, pol
	d.enforce(reason)
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (and more)"
	}
	return s
}

func errorList(err error) string {
	var es *policy.Errors
	if errors.As(err, &es) {
		lines := make([]string, 0, len(es.List)+1)
		for _, e := range es.List {
			lines = append(lines, e.Error())
		}
		if es.Dropped > 0 {
			lines = append(lines, fmt.Sprintf("and %d more", es.Dropped))
		}
		return strings.Join(lines, "; ")
	}
	return err.Error()
}

// kernelChanged looks at a change notification: nothing to do when the
// ruleset's generation is still the daemon's own commit's.
func (d *Daemon) kernelChanged() {
	if d.lastGen != 0 {
		if gen, err := d.cfg.Engine.Host.Tables.Gen(); err == nil && gen == d.lastGen {
			return
		}
	}
	d.enforce("kernel changed")
}

// enforce makes the kernel match the last good policy. It is how reloads
// apply and how drift is repaired.
func (d *Daemon) enforce(reason string) {
	defer d.notifyStatus()
	if d.good == nil {
		return
	}
	prevGen := d.lastGen
	e := d.cfg.Engine
	start := d.cfg.Clock.Now()
	reloading := reason == "file changed" || reason == "SIGHUP" || reason == "start"
	p, err := e.Prepare(d.cfg.Path, d.goodPol, d.good)
	if err != nil {
		d.fail("policy cannot be enforced here; the kernel was not changed", reason, err)
		if reloading {
			d.observe(func(o Observer) { o.Reloaded("failed", 0) })
		}
		return
	}
	if reason == "start" {
		for _, w := range p.Warnings() {
			d.cfg.Log.Warn(w)
		}
		for _, n := range p.Notes() {
			d.cfg.Log.Info(n)
		}
	}
	d.plan = p
	// The start reports squatters bound before the guard; later syncs leave
	// that and the sweep to the periodic audit.
	p.Quiet = reason != "start"
	r, err := e.Sync(p, false)
	took := d.cfg.Clock.Now().Sub(start)
	var partial *engine.PartialError
	if err != nil && !errors.As(err, &partial) {
		d.fail("apply failed", reason, err)
		if reloading {
			d.observe(func(o Observer) { o.Reloaded("failed", 0) })
		}
		return
	}
	if st, serr := e.Host.State.Load(); serr == nil {
		d.lastGen = st.Gen
	}
	if err != nil {
		d.fail("applied only in part", reason, err)
	} else {
		d.recovered(reason)
	}
	d.report(r)
	if !r.InSync() {
		d.appliedAt = d.cfg.Clock.Now()
	} else if d.appliedAt.IsZero() {
		d.appliedAt = d.cfg.Clock.Now()
	}
	switch {
	case reloading && r.InSync():
		d.observe(func(o Observer) { o.Reloaded("unchanged", 0) })
	case reloading:
		took := time.Duration(0)
		if !d.editAt.IsZero() && reason == "file changed" {
			took = d.cfg.Clock.Now().Sub(d.editAt)
		}
		d.observe(func(o Observer) { o.Reloaded("applied", took) })
	case !r.InSync():
		d.observe(func(o Observer) { o.Repaired() })
	}
	if r.InSync() {
		if reason == "start" || reason == "SIGHUP" || reason == "file changed" {
			d.cfg.Log.Info("policy in force", "reason", reason, "policy", d.cfg.Path,
				"reservations", len(d.good.Reservations), "table", p.Table, "changed", false,
				"bind_guard", p.Guard.On)
		}
		return
	}
	attrs := []any{"reason", reason, "policy", d.cfg.Path, "table", p.Table, "mode", r.Mode,
		"reservations", len(d.good.Reservations),
		"added", r.Changes.Added, "removed", r.Changes.Removed, "changed", r.Changes.Changed,
		"sysctls", r.Sysctls, "bind_guard", r.Guard, "load_ms", d.loadTook.Milliseconds(), "took_ms", took.Milliseconds()}
	if r.OldTable != "" {
		attrs = append(attrs, "old_table_removed", r.OldTable)
	}
	if reason == "kernel changed" || reason == "periodic check" {
		if d.cfg.ChangedBy != nil && prevGen != 0 {
			if who := d.cfg.ChangedBy(prevGen, d.lastGen); who != "" {
				attrs = append(attrs, "changed_by", who)
			}
		}
		d.cfg.Log.Warn("drift repaired: portfw's table, guard or sysctls were changed by someone else", attrs...)
		return
	}
	d.cfg.Log.Info("applied", attrs...)
}

// report logs what a sync found besides its changes: new squatters, swept
// guard entries, warnings.
func (d *Daemon) report(r engine.Result) {
	for _, f := range d.tracker.New(audit.Report{Findings: r.Squatters}) {
		d.cfg.Log.Warn("squatter on a reserved port (bound before the guard could refuse it; its traffic is dropped)", "finding", f.String())
	}
	if r.Swept > 0 {
		d.cfg.Log.Info("bind guard: removed the entries of deleted network namespaces", "count", r.Swept)
	}
	for _, w := range r.Warnings {
		d.cfg.Log.Warn(w)
	}
}

// fail logs a failure: once when it first happens, then at most every
// errorRepeat while it keeps happening identically.
func (d *Daemon) fail(msg, reason string, err error) {
	text := msg + ": " + err.Error()
	now := d.cfg.Clock.Now()
	if text == d.failure && now.Sub(d.failureAt) < errorRepeat {
		d.failureSeen++
		return
	}
	attrs := []any{"reason", reason, "err", err}
	if text == d.failure {
		attrs = append(attrs, "repeated", d.failureSeen+1, "since", d.failureAt.Format(time.RFC3339))
	}
	d.failure, d.failureAt, d.failureSeen = text, now, 0
	d.cfg.Log.Error(msg, attrs...)
}

func (d *Daemon) recovered(reason string) {
	if d.failure != "" {
		d.cfg.Log.Info("recovered: the policy is enforced again", "reason", reason, "after_failures", d.failureSeen+1)
		d.failure, d.failureSeen = "", 0
	}
}

// audit logs each squatter once, when it first appears, and sweeps the
// bind guard's entries of deleted namespaces.
func (d *Daemon) audit() {
	if d.plan == nil {
		return
	}
	h := d.cfg.Engine.Host
	if h.Sockets != nil {
		socks, err := h.Sockets()
		if err != nil {
			d.cfg.Log.Warn("audit failed", "err", err)
		} else {
			rep := audit.Classify(d.plan.Resolved, socks)
			for _, f := range d.tracker.New(rep) {
				d.cfg.Log.Warn("squatter on a reserved port (its traffic is dropped)", "finding", f.String())
			}
			counts := map[string]int{}
			for _, f := range rep.Findings {
				if f.Verdict == audit.Squatter {
					counts[f.Reservation]++
				}
			}
			d.observe(func(o Observer) { o.Audited(counts) })
		}
	}
	if d.plan.Guard.On {
		swept, err := h.Guard.Sweep()
		if len(swept) > 0 {
			d.cfg.Log.Info("bind guard: removed the entries of deleted network namespaces", "count", len(swept))
		}
		if err != nil {
			d.cfg.Log.Debug("bind guard sweep incomplete", "err", err)
		}
	}
}

// notifyStatus tells systemd what the daemon is doing, after every reload
// and check.
func (d *Daemon) notifyStatus() {
	status := "no valid policy yet; watching " + d.cfg.Path
	switch {
	case d.good != nil && d.failure != "":
		status = "FAILING: " + d.failure
	case d.good != nil:
		status = fmt.Sprintf("enforcing %d reservations from %s", len(d.good.Reservations), d.cfg.Path)
		if d.plan != nil && !d.plan.Guard.On {
			status += " (bind guard off)"
		}
	}
	if len(status) > 200 {
		status = status[:200]
	}
	d.cfg.Notify("READY=1\nSTATUS=" + status)
	st := metrics.State{Policy: d.cfg.Path, Gen: d.lastGen, Failure: d.failure, AppliedAt: d.appliedAt, Rejected: d.rejectedWhy}
	if d.good != nil && d.plan != nil {
		st.Reservations, st.Table, st.GuardOn = len(d.good.Reservations), d.plan.Table, d.plan.Guard.On
		st.Enforced = d.lastGen != 0
	}
	d.observe(func(o Observer) { o.Set(st) })
}

func (d *Daemon) observe(f func(Observer)) {
	if d.cfg.Observer != nil {
		f(d.cfg.Observer)
	}
}

func (d *Daemon) stop() error {
	d.cfg.Notify("STOPPING=1")
	if !d.cfg.RemoveOnExit {
		d.cfg.Log.Info("stopping; rules stay in place", "policy", d.cfg.Path)
		return nil
	}
	var tables []string
	if d.good != nil {
		tables = append(tables, d.good.Settings.Table)
	}
	rr, err := d.cfg.Engine.Remove(tables...)
	if err != nil {
		return fmt.Errorf("remove on exit: %w", err)
	}
	d.cfg.Log.Info("stopping; removed table, guard and restored sysctls", "tables", rr.Tables, "restored", rr.Restored)
	return nil
}
