package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/net/netutil"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
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
	if *metricsAddr != "" {
		if _, err := net.ResolveTCPAddr("tcp", *metricsAddr); err != nil {
			fmt.Fprintf(a.stderr, "portfw watch: --metrics-address %q: %v (want HOST:PORT or [IPv6]:PORT)\n", *metricsAddr, err)
			return exitUsage
		}
	}

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
	var cgroupDir func() string
	if s, ok := a.resolver().(*resolve.System); ok {
		watchFiles = s.Files()
		forget = func() { s.Forget(); loader.Forget() }
		if s.Cgroups != nil {
			cgroupDir = func() string {
				if fd := s.Cgroups.RootFD(); fd >= 0 {
					return "/proc/self/fd/" + strconv.Itoa(fd)
				}
				return ""
			}
		}
	}
	var observer watch.Observer
	if *metricsAddr != "" {
		m, closeMetrics, err := serveMetrics(ctx, *metricsAddr, e, log)
		if err != nil {
			log.Error("metrics", "err", err)
			return exitNo
		}
		defer closeMetrics()
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
		CgroupDir: cgroupDir,
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

// serveMetrics serves /metrics and /healthz on addr. They read the kernel
// through a netlink connection of their own, one request at a time, so a
// scrape never interleaves with the daemon's commits and dumps. A busy
// address does not stop the daemon: enforcing comes first, and the
// listener is retried every few seconds until it binds.
func serveMetrics(ctx context.Context, addr string, e *engine.Engine, log *slog.Logger) (*metrics.Metrics, func(), error) {
	conn, err := nft.Open(-1)
	if err != nil {
		return nil, nil, fmt.Errorf("open a netlink connection for the metrics: %w", err)
	}
	var mu sync.Mutex
	reader := &engine.Engine{Host: engine.Host{Tables: conn}}
	src := metrics.Source{
		Gen: func() (uint32, error) { mu.Lock(); defer mu.Unlock(); return conn.Gen() },
		Drops: func(table string) ([]compiler.Summary, error) {
			mu.Lock()
			defer mu.Unlock()
			return reader.Drops(table)
		},
		ScrapeError: func(err error) { log.Warn("metrics: cannot read the drop counters", "err", err) },
	}
	if l, ok := e.Host.Lock.(interface{ Held() error }); ok {
		src.LockHeld = l.Held
	}
	m := metrics.New(version, src)
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	go func() {
		for retry := time.Duration(0); ; retry = 5 * time.Second {
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				log.Error("metrics: cannot listen; retrying in 5s (enforcing goes on)", "address", addr, "err", err)
				continue
			}
			log.Info("serving metrics", "address", ln.Addr().String())
			// A handful of connections is all Prometheus and a probe need.
			if err := srv.Serve(netutil.LimitListener(ln, 8)); !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics: server stopped; restarting", "err", err)
				continue
			}
			return
		}
	}()
	return m, func() { srv.Close(); conn.Close() }, nil
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
