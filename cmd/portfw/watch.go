package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

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
	changes, err := nft.WatchChanges(ctx, -1)
	if err != nil {
		log.Warn("no nftables change notifications; drift is caught by the periodic check only", "err", err)
	}
	audit := *auditEvery
	if audit == 0 {
		audit = -1
	}
	// The daemon parses and resolves only the reservations an edit touched.
	loader := resolve.NewLoader(*path, a.resolver())
	var watchFiles []string
	forget := loader.Forget
	if s, ok := a.resolver().(*resolve.System); ok {
		watchFiles = s.Files()
		forget = func() { s.Forget(); loader.Forget() }
	}
	d, err := watch.New(watch.Config{
		Path: *path, Engine: e, Log: log, KernelChanges: changes, Reload: hup, Forget: forget,
		Load: func(path string) (*policy.Policy, *model.Resolved, error) {
			l, err := a.loadWith(path, *insecure, loader)
			if err != nil {
				return nil, nil, err
			}
			return l.policy, l.resolved, nil
		},
		Notify:   func(s string) { daemon.SdNotify(false, s) },
		Debounce: *debounce, Recheck: *recheck, AuditInterval: audit,
		RemoveOnExit: *removeOnExit, WatchFiles: watchFiles,
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
