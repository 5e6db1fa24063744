package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// Reload is what `pfwbench reload` writes.
type Reload struct {
	Reservations int     `json:"reservations"`
	DebounceMS   float64 `json:"debounce_ms"`
	// LatencyMS: from the start of writing the new policy to the kernel's
	// NEWGEN notification of the daemon's commit, one per edit.
	LatencyMS []float64 `json:"latency_ms"`
	// TookMS: the daemon's own took_ms (prepare + sync) for the same edits.
	TookMS []float64      `json:"took_ms"`
	Modes  map[string]int `json:"modes"`
	// RSSMiB and PeakRSSMiB are the daemon's resident memory after the
	// edits and its high-water mark (VmRSS, VmHWM of /proc/PID/status).
	RSSMiB     float64 `json:"rss_mib"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
}

// daemonLog is the part of a `portfw watch --log-format json` line we use.
type daemonLog struct {
	Msg     string   `json:"msg"`
	Level   string   `json:"level"`
	Mode    string   `json:"mode"`
	TookMS  float64  `json:"took_ms"`
	Changed []string `json:"changed"`
	Err     string   `json:"err"`
	Errors  string   `json:"errors"`
}

// runReload runs `portfw watch` in the calling process's (throwaway)
// network namespace and edits its policy -edits times, one owner change
// per edit, each written by rename as editors do. The change counts as in
// the kernel when the kernel multicasts NEWGEN for the daemon's commit:
// nothing else commits in the namespace, and the daemon's own drift check
// that follows only reads. At the end the table is read back and compared
// with the last policy, so the latencies are of correct reloads.
func runReload(args []string) error {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	var sf specFlags
	sf.register(fs)
	bin := fs.String("portfw", "bin/portfw", "the portfw binary")
	dir := fs.String("dir", "", "a directory only root can write, for the policy")
	edits := fs.Int("edits", 200, "policy edits to time")
	debounce := fs.Duration("debounce", 10*time.Millisecond, "the daemon's --debounce (its default)")
	out := fs.String("o", "", "write JSON here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := sf.spec()
	if err != nil {
		return err
	}
	if *dir == "" || *out == "" || s.N < 2 {
		return errors.New("-dir, -o and -n >= 2 are required")
	}
	path := filepath.Join(*dir, "policy.yaml")
	overrides := map[string]uint32{}
	write := func(text []byte) error {
		tmp := filepath.Join(*dir, ".policy.yaml.tmp")
		if err := os.WriteFile(tmp, text, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
	if err := write(s.YAML(overrides)); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	commits, err := nft.WatchChanges(ctx, -1)
	if err != nil {
		return err
	}
	d, err := startDaemon(*bin, "watch", "-f", path, "--log-format", "json",
		"--debounce", debounce.String(), "--audit-interval", "0")
	if err != nil {
		return err
	}
	defer d.stop()
	cmd, applied, logErr := d.cmd, d.applied, d.errc

	r := Reload{Reservations: s.N + s.Ranges, DebounceMS: ms(*debounce), Modes: map[string]int{}}
	if _, err := waitApplied(applied, logErr, 60*time.Second); err != nil {
		return fmt.Errorf("initial apply: %w", err)
	}
	for i := range *edits {
		if err := waitIdle(cmd.Process.Pid, *debounce); err != nil {
			return err
		}
		drain(commits)
		name := fmt.Sprintf("r%05d", 1+i%(s.N-1))
		overrides[name] = uint32(70000 + i)
		// The clock starts at the write, not at making the text (9 ms at
		// 10k): what an admin's editor does is the write.
		text := s.YAML(overrides)
		t0 := time.Now()
		if err := write(text); err != nil {
			return err
		}
		if err := waitCommit(commits, logErr, fmt.Sprintf("edit %d", i)); err != nil {
			return err
		}
		r.LatencyMS = append(r.LatencyMS, ms(time.Since(t0)))
		l, err := waitApplied(applied, logErr, 30*time.Second)
		if err != nil {
			return fmt.Errorf("edit %d: %w", i, err)
		}
		if len(l.Changed) != 1 || l.Changed[0] != name {
			return fmt.Errorf("edit %d changed %s; the daemon reports %v", i, name, l.Changed)
		}
		r.TookMS = append(r.TookMS, l.TookMS)
		r.Modes[l.Mode]++
	}
	if err := checkInSync(s.YAML(overrides)); err != nil {
		return err
	}
	if r.RSSMiB, r.PeakRSSMiB, err = memory(cmd.Process.Pid); err != nil {
		return err
	}
	return writeJSON(*out, r)
}

// daemon is a `portfw watch` a benchmark runs, its JSON log followed.
type daemon struct {
	cmd     *exec.Cmd
	applied <-chan daemonLog
	errc    <-chan error
}

// startDaemon starts bin with args (a `watch` with --log-format json).
func startDaemon(bin string, args ...string) (*daemon, error) {
	cmd := exec.Command(bin, args...)
	// The daemon must not outlive the benchmark, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	applied, errc := followLog(stderr)
	return &daemon{cmd, applied, errc}, nil
}

func (d *daemon) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = d.cmd.Wait()
}

// waitCommit waits for the kernel's notification of a commit.
func waitCommit(commits <-chan struct{}, errc <-chan error, what string) error {
	select {
	case _, ok := <-commits:
		if !ok {
			return errors.New("nftables notifications stopped")
		}
		return nil
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no commit within 30s", what)
	}
}

// modesText is "delta: 3, replace: 1".
func modesText(modes map[string]int) string {
	var out []string
	for m, c := range modes {
		out = append(out, fmt.Sprintf("%s: %d", m, c))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// memory reads a process's resident set and its high-water mark, in MiB.
func memory(pid int) (rss, peak float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return rss, peak, nil
}

// followLog parses the daemon's JSON log: "applied" lines go to the first
// channel; errors, and the log ending, to the second.
func followLog(r io.Reader) (<-chan daemonLog, <-chan error) {
	applied := make(chan daemonLog, 16)
	errc := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<26) // a 10k-reservation start line is long
		for sc.Scan() {
			var l daemonLog
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch {
			case l.Msg == "applied":
				applied <- l
			case l.Level == "ERROR":
				errc <- fmt.Errorf("daemon: %s %s%s", l.Msg, l.Err, l.Errors)
				return
			}
		}
		errc <- fmt.Errorf("daemon log ended (%v)", sc.Err())
	}()
	return applied, errc
}

func waitApplied(applied <-chan daemonLog, errc <-chan error, timeout time.Duration) (daemonLog, error) {
	select {
	case l := <-applied:
		return l, nil
	case err := <-errc:
		return daemonLog{}, err
	case <-time.After(timeout):
		return daemonLog{}, fmt.Errorf("no \"applied\" log line within %s", timeout)
	}
}

func drain(c <-chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// waitIdle returns once the daemon has had time to act on its own commit's
// notification (debounce, then a read-back check) and has used no CPU for
// a while, so that each edit finds it waiting and the latency is a
// reload's, not a reload queued behind a drift check.
func waitIdle(pid int, debounce time.Duration) error {
	time.Sleep(debounce + 20*time.Millisecond)
	last, quiet := int64(-1), 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		t, err := cpuTicks(pid)
		if err != nil {
			return err
		}
		if t == last {
			quiet++
		} else {
			quiet = 0
		}
		if quiet >= 3 {
			return nil
		}
		last = t
		time.Sleep(25 * time.Millisecond)
	}
	return errors.New("the daemon did not go idle within 20s")
}

// cpuTicks is utime+stime of pid from /proc/PID/stat.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	return u + s, errors.Join(err1, err2)
}

// checkInSync compares the kernel's table with the policy text.
func checkInSync(yaml []byte) error {
	p, err := policy.Parse("policy.yaml", yaml)
	if err != nil {
		return err
	}
	res, err := resolve.Resolve(p, resolve.Static{})
	if err != nil {
		return err
	}
	want := compiler.Compile(res)
	k, err := nft.Open(-1)
	if err != nil {
		return err
	}
	got, err := k.Read(want.Table)
	if err != nil {
		return err
	}
	if c := compiler.Diff(got, want); !c.InSync() {
		return fmt.Errorf("after the last edit the kernel differs from the policy: %+v", c)
	}
	return nil
}
