package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/portfw/portfw/nft"
)

// Restart is what `pfwbench restart` measures: the window in which a
// restarted unit's new cgroup owns nothing yet.
type Restart struct {
	Reservations int `json:"reservations"`
	// LatencyMS: from mkdir of the unit's new cgroup to the kernel's NEWGEN
	// notification of the daemon's commit of its id, one per restart.
	LatencyMS []float64 `json:"latency_ms"`
	// RemoveMS: from rmdir of the cgroup to the commit of the id's removal.
	RemoveMS []float64      `json:"remove_ms"`
	Modes    map[string]int `json:"modes"`
}

// runRestart runs `portfw watch` on a policy whose measured reservation is
// owned by a cgroup (the rest by uids, as the reload benchmark's), then
// removes and makes that cgroup again, as systemd does on a restart, and
// times each change to the kernel's commit.
func runRestart(args []string) error {
	fs := flag.NewFlagSet("restart", flag.ContinueOnError)
	var sf specFlags
	sf.register(fs)
	bin := fs.String("portfw", "bin/portfw", "the portfw binary")
	dir := fs.String("dir", "", "a directory only root can write, for the policy")
	cgDir := fs.String("cgroup-dir", "", "the unit's cgroup directory (made and removed; its parent must exist)")
	cgPath := fs.String("cgroup-path", "", "the same cgroup as a path from the hierarchy's root")
	rounds := fs.Int("restarts", 100, "restarts to time")
	out := fs.String("o", "", "write JSON here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := sf.spec()
	if err != nil {
		return err
	}
	if *dir == "" || *out == "" || *cgDir == "" || *cgPath == "" {
		return errors.New("-dir, -cgroup-dir, -cgroup-path and -o are required")
	}
	// The measured reservation ("bench", the first) is the unit's.
	text := strings.Replace(string(s.YAML(nil)), fmt.Sprintf("owner: { users: [%d] }", s.UID), fmt.Sprintf("owner: { cgroups: [%q] }", *cgPath), 1)
	if !strings.Contains(text, *cgPath) {
		return errors.New("no reservation for the unit in the generated policy")
	}
	path := filepath.Join(*dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return err
	}
	if err := os.Mkdir(*cgDir, 0o755); err != nil {
		return err
	}
	defer os.Remove(*cgDir)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	commits, err := nft.WatchChanges(ctx, -1)
	if err != nil {
		return err
	}
	d, err := startDaemon(*bin, "watch", "-f", path, "--log-format", "json", "--audit-interval", "0")
	if err != nil {
		return err
	}
	defer d.stop()
	applied, logErr := d.applied, d.errc
	r := Restart{Reservations: s.N + s.Ranges, Modes: map[string]int{}}
	if _, err := waitApplied(applied, logErr, 60*time.Second); err != nil {
		return fmt.Errorf("initial apply: %w", err)
	}
	// one change: do it, time it to the daemon's commit.
	one := func(what string, change func() error) (float64, error) {
		if err := waitIdle(d.cmd.Process.Pid, 10*time.Millisecond); err != nil {
			return 0, err
		}
		drain(commits)
		t0 := time.Now()
		if err := change(); err != nil {
			return 0, err
		}
		if err := waitCommit(commits, logErr, what); err != nil {
			return 0, err
		}
		took := ms(time.Since(t0))
		l, err := waitApplied(applied, logErr, 30*time.Second)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if len(l.Changed) != 1 || l.Changed[0] != "bench" {
			return 0, fmt.Errorf("%s changed %v, not bench", what, l.Changed)
		}
		r.Modes[l.Mode]++
		return took, nil
	}
	for i := range *rounds {
		rm, err := one(fmt.Sprintf("restart %d: rmdir", i), func() error { return os.Remove(*cgDir) })
		if err != nil {
			return err
		}
		mk, err := one(fmt.Sprintf("restart %d: mkdir", i), func() error { return os.Mkdir(*cgDir, 0o755) })
		if err != nil {
			return err
		}
		r.RemoveMS, r.LatencyMS = append(r.RemoveMS, rm), append(r.LatencyMS, mk)
	}
	return writeJSON(*out, r)
}
