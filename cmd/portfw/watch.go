package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/portfw/portfw/internal/metrics"
	"github.com/portfw/portfw/internal/watch"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

func runWatch(a *app, args []string) int {
	fs := a.flags("watch")
	path := fileFlag(fs)
	logFormat := fs.String("log-format", "text", "log format: text or json")
	removeOnExit := fs.Bool("remove-on-exit", false, "remove the table and guard and restore sysctls on SIGTERM/SIGINT (default: they stay)")
	insecure := insecureFlag(fs)
	debounce := fs.Duration("debounce", 10*time.Millisecond, "quiet time before acting on a burst of file or kernel events")
	recheck := fs.Duration("recheck", 30*time.Second, "how often to compare the kernel with the policy even without events")
	auditEvery := fs.Duration("audit-interval", time.Minute, "how often to look for squatters and sweep the guard entries of deleted namespaces (0: never)")
	metricsAddr := fs.String("metrics-address", "", "serve Prometheus metrics at /metrics and a health check at /healthz on `HOST:PORT` (off when empty)")
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(a.stderr, nil)
	case "json":
		h = slog.NewJSONHandler(a.stderr, nil)
	default:
		fmt.Fprintf(a.stderr, "portfw watch: --log-format must be text or json, not %q\n", *logFormat)
		return exitUsage
	}
	log := slog.New(h)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	e, err := a.host(*o)
	if err != nil {
		log.Error("open the host", "err", err)
		return exitNo
	}
	var changes <-chan struct{}
	var changedBy func(from, to uint32) string
	if mon, err := nft.WatchCommits(ctx, -1); err != nil {
		log.Warn("no nftables change notifications; drift is caught by the periodic check only", "err", err)
	} else {
		changes = mon.C
		changedBy = func(from, to uint32) string { return committers(mon.Since(from), to) }
	}
	audit := *auditEvery
	if audit == 0 {
		audit = -1
	}
	// The daemon parses and resolves only the reservations an edit touched.
	loader := resolve.NewLoader(a.resolver())
	var watchFiles []string
	forget := loader.Forget
	if s, ok := a.resolver().(*resolve.System); ok {
		watchFiles = s.Files()
		forget = func() { s.Forget(); loader.Forget() }
	}
	var observer watch.Observer
	if *metricsAddr != "" {
		src := metrics.Source{Gen: e.Host.Tables.Gen, Drops: e.Drops,
			ScrapeError: func(err error) { log.Warn("metrics scrape incomplete", "err", err) }}
		if l, ok := e.Host.Lock.(interface{ Held() error }); ok {
			src.LockHeld = l.Held
		}
		m := metrics.New(version, src)
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			log.Error("serve metrics", "err", err)
			return exitUsage
		}
		srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "address", ln.Addr().String())
		observer = m
	}
	var watchdog time.Duration
	if every, err := daemon.SdWatchdogEnabled(false); err == nil && every > 0 {
		watchdog = every / 2
	}
	d, err := watch.New(watch.Config{
		ChangedBy: changedBy,
		Path:      *path, DropIns: absPath(resolve.DropInDir(*path)), Engine: e, Log: log, KernelChanges: changes, Reload: hup, Forget: forget,
		Load: func(path string) (*policy.Policy, *model.Resolved, error) {
			l, err := a.loadWith(path, *insecure, loader)
			if err != nil {
				return nil, nil, err
			}
			return l.policy, l.resolved, nil
		},
		Notify:   func(s string) { daemon.SdNotify(false, s) },
		Debounce: *debounce, Recheck: *recheck, AuditInterval: audit,
		RemoveOnExit: *removeOnExit, WatchFiles: watchFiles, Observer: observer, Watchdog: watchdog,
	})
	if err != nil {
		log.Error("start", "err", err)
		return exitUsage
	}
	log.Info("watching", "policy", *path, "pid", os.Getpid())
	if err := d.Run(ctx); err != nil {
		log.Error("stopped", "err", err)
		return exitNo
	}
	return exitOK
}

// absPath is path made absolute (fsnotify names events by the absolute
// directories watched), or path when that fails.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// committers names the processes that made the commits before generation
// ours (the daemon's own), each once: "nft (pid 4242), iptables-nft (pid
// 4250)". The kernel reports the committing thread's id, so a commit from
// any of this process's threads is its own too.
func committers(cs []nft.Commit, ours uint32) string {
	var names []string
	for _, c := range cs {
		if int32(c.Gen-ours) >= 0 || ownThread(c.PID) {
			continue
		}
		if who := c.Who(); who != "" && !slices.Contains(names, who) {
			names = append(names, who)
		}
	}
	return strings.Join(names, ", ")
}

// ownThread reports whether tid is one of this process's threads.
func ownThread(tid uint32) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}
