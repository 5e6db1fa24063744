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
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
)

func runWatch(a *app, args []string) int {
	fs := a.flags("watch")
	path := fileFlag(fs)
	logFormat := fs.String("log-format", "text", "log format: text or json")
	removeOnExit := fs.Bool("remove-on-exit", false, "remove the table and restore sysctls on SIGTERM/SIGINT (default: rules stay)")
	insecure := fs.Bool("insecure-policy-perms", false, "accept a policy file writable by users other than root")
	debounce := fs.Duration("debounce", 10*time.Millisecond, "quiet time before acting on a burst of file or kernel events")
	recheck := fs.Duration("recheck", 30*time.Second, "how often to compare the kernel with the policy even without events")
	auditEvery := fs.Duration("audit-interval", time.Minute, "how often to look for squatters (0: never)")
	bg := addBindGuardFlags(fs)
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
	if !*insecure {
		// Refuse at start too: a daemon that runs with a world-writable
		// policy would hand ports to whoever edits it.
		if err := policy.CheckPerms(*path); err != nil {
			log.Error("policy refused", "err", err)
			return exitNo
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	k, err := nft.Open(-1)
	if err != nil {
		log.Error("open nftables", "err", err)
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
	d, err := watch.New(watch.Config{
		Path: *path, Kernel: k, Log: log, KernelChanges: changes, Reload: hup,
		Notify:   func(s string) { daemon.SdNotify(false, s) },
		Debounce: *debounce, Recheck: *recheck, AuditInterval: audit,
		InsecurePerms: *insecure, RemoveOnExit: *removeOnExit, BindGuardCgroup: *bg.cgroup,
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
