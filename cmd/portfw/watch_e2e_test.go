package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// watchProc is a real `portfw watch` running in a namespace.
type watchProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	done chan error
}

func startDaemon(t *testing.T, v via, ns *testenv.NS, path string, extra ...string) *watchProc {
	t.Helper()
	return startDaemonCmd(t, v.command(ns, daemonArgs(t, path, extra...)...))
}

func daemonArgs(t *testing.T, path string, extra ...string) []string {
	return append([]string{portfwBin(t), "watch", "-f", path, "--debounce", "10ms", "--audit-interval", "0"}, extra...)
}

// startDaemonCmd starts cmd, a `portfw watch`, and waits for its start.
func startDaemonCmd(t *testing.T, cmd *exec.Cmd) *watchProc {
	t.Helper()
	d := &watchProc{t: t, cmd: cmd, done: make(chan error, 1)}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.mu.Lock()
			d.log.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
		}
		d.done <- d.cmd.Wait()
	}()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logText())
		}
	})
	d.waitLog("reason=start", 1)
	return d
}

func (d *watchProc) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

func (d *watchProc) count(substr string) int { return strings.Count(d.logText(), substr) }

func (d *watchProc) waitLog(substr string, n int) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if d.count(substr) >= n {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	d.t.Fatalf("daemon did not log %q %d times:\n%s", substr, n, d.logText())
}

// replace writes a file next to path and renames it over, as editors do.
func replace(t *testing.T, path, text string) { t.Helper(); testenv.ReplaceFile(t, path, text) }

func tableHas(t *testing.T, ns *testenv.NS, substr string) bool {
	t.Helper()
	out, _, err := ns.Exec("nft", "list", "table", "inet", "portfw")
	if err != nil {
		return false
	}
	// The count sets hold the keys of what was dropped, ports that left
	// the policy included: not the policy's part of the table.
	var kept []string
	skip := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "\tset cnt"):
			skip = true
		case skip && line == "\t}":
			skip = false
		case !skip:
			kept = append(kept, line)
		}
	}
	return strings.Contains(strings.Join(kept, "\n"), substr)
}

// policy is webPolicy for this world with the given settings.
func (w *world) policy(settings string) string {
	return fmt.Sprintf(webPolicy, w.owner.UID, w.squat.UID, w.worker.UID, settings)
}

// TestWatchDaemon runs the daemon with the guard under `ip netns exec` (the
// case 0.1 could not serve) and with the rules alone under nsenter.
func TestWatchDaemon(t *testing.T) {
	layers(t, func(t *testing.T, guard bool, settings string) {
		v := viaNsenter
		if guard {
			v = viaIPNetnsExec
		}
		testWatchDaemon(t, v, guard, settings)
	})
}

func testWatchDaemon(t *testing.T, v via, guard bool, settings string) {
	w := setupVia(t, v, "")
	path := writePolicy(t, w.policy(settings))
	d := startDaemon(t, v, w.Server, path)
	if !tableHas(t, w.Server, `tcp . 8443 comment "web"`) {
		t.Fatal("daemon did not apply the policy at start")
	}
	if want := map[bool]string{true: "bind_guard=updated", false: "bind_guard=off"}[guard]; d.count(want) != 1 {
		t.Fatalf("start did not log %s:\n%s", want, d.logText())
	}

	t.Run("rename over", func(t *testing.T) {
		replace(t, path, strings.Replace(w.policy(settings), "[8080, 8443]", "[8080, 8443, 8444]", 1))
		d.waitLog("mode=delta", 1)
		if !tableHas(t, w.Server, "tcp . 8444") {
			t.Error("renamed-over policy not applied")
		}
		if guard {
			// The guard follows the reload: 8444 is refused to others now.
			if got := w.Server.TryBind(t, testenv.TCP, any6(8444), w.squat); got != "EPERM" {
				t.Errorf("squatter bind of the newly reserved 8444: %s, want EPERM", got)
			}
		}
	})
	t.Run("invalid file keeps the last good", func(t *testing.T) {
		before := w.Server.Run(t, "nft", "list", "table", "inet", "portfw")
		replace(t, path, "version: 1\nreservations:\n  - name: web\n    ports: [99999]\n    owner: { users: [1] }\n")
		d.waitLog("policy rejected; still enforcing the last good policy", 1)
		d.waitLog("policy.yaml:4:13: reservations[0].ports[0]: port 99999", 1)
		if after := w.Server.Run(t, "nft", "list", "table", "inet", "portfw"); after != before {
			t.Error("an invalid policy changed the table")
		}
		replace(t, path, w.policy(settings))
		d.waitLog("mode=delta", 2)
		if tableHas(t, w.Server, "tcp . 8444") || !tableHas(t, w.Server, "tcp . 8443") {
			t.Error("valid policy after an invalid one not applied")
		}
	})
	t.Run("table deleted is restored within a second", func(t *testing.T) {
		w.Server.Run(t, "nft", "delete", "table", "inet", "portfw")
		start := time.Now()
		for !tableHas(t, w.Server, "tcp . 8443") {
			if time.Since(start) > time.Second {
				t.Fatal("table not restored within a second")
			}
			time.Sleep(5 * time.Millisecond)
		}
		d.waitLog("drift repaired", 1)
		w.Server.Run(t, "nft", "flush", "ruleset")
		d.waitLog("drift repaired", 2)
		if guard {
			// The guard does not depend on the ruleset.
			if got := w.Server.TryBind(t, testenv.UDP, any6(5060), w.squat); got != "EPERM" {
				t.Errorf("squatter bind of 5060/udp after a ruleset flush: %s, want EPERM", got)
			}
			return
		}
		// Traffic is enforced again, not just listed.
		sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})
		testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443)}))
		if len(sq.Received(t)) != 0 {
			t.Error("squatter read data after the repair")
		}
		sq.Stop(t)
	})
	t.Run("SIGHUP reloads", func(t *testing.T) {
		d.cmd.Process.Signal(syscall.SIGHUP)
		d.waitLog("reason=SIGHUP", 1)
	})
	t.Run("SIGTERM leaves the rules", func(t *testing.T) {
		d.cmd.Process.Signal(syscall.SIGTERM)
		if err := <-d.done; err != nil {
			t.Errorf("daemon exit after SIGTERM: %v", err)
		}
		d.done <- nil
		if !tableHas(t, w.Server, "tcp . 8443") {
			t.Error("rules gone after SIGTERM")
		}
	})
}

// TestWatchConfigMap: Kubernetes mounts a ConfigMap as
// dir/policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>, and
// updates it by renaming a new ..data symlink over the old one.
func TestWatchConfigMap(t *testing.T) {
	w := setup(t, "")
	dir := t.TempDir()
	version := func(name, text string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "policy.yaml"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_11_24_01", w.policy(""))
	path := filepath.Join(dir, "policy.yaml")
	if err := os.Symlink("..data/policy.yaml", path); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, viaIPNetnsExec, w.Server, path)
	version("..2026_11_24_02", strings.Replace(w.policy(""), "[8080, 8443]", "[8080, 8443, 9443]", 1))
	d.waitLog(`reason="file changed"`, 1)
	if !tableHas(t, w.Server, "tcp . 9443") {
		t.Fatal("ConfigMap update not applied")
	}
}

// TestWatchReloadUnderTraffic: 1000 reloads alternating policies (element
// deltas and whole-table replaces) while an owner serves and a squatter
// listens, with clients in a loop: no squatter byte is delivered and no
// owner connection fails.
func TestWatchReloadUnderTraffic(t *testing.T) {
	w := setup(t, "")
	// The squatter must be able to bind: the rules alone are under test.
	base := w.policy("bind_guard: off") + "  - name: filler\n    ports: [9000]\n    owner: { users: [%d] }\n"
	policies := []string{
		fmt.Sprintf(base, w.worker.UID),
		strings.Replace(fmt.Sprintf(base, w.worker.UID), "[9000]", "[9000, 9001]", 1), // delta
		fmt.Sprintf(base, w.worker.UID),
		strings.Replace(fmt.Sprintf(base, w.worker.UID), "{ bind_guard: off }", "{ bind_guard: off, log: false }", 1), // replace
	}
	path := writePolicy(t, policies[0])
	d := startDaemon(t, viaIPNetnsExec, w.Server, path)
	owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.owner})
	squat := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})

	var stop atomic.Bool
	var ownerOK, ownerFail, squatTries, squatBytes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: w.v4(8080), As: w.worker}, 4) {
				if r.Connected && string(r.Received) == owner.Reply {
					ownerOK.Add(1)
				} else {
					ownerFail.Add(1)
					t.Errorf("owner connection failed during reloads: %v", r)
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: w.v4(8443), ConnectTimeout: 300 * time.Millisecond, Timeout: 300 * time.Millisecond}, 4) {
				squatTries.Add(1)
				squatBytes.Add(int64(len(r.Received)))
			}
		}
	}()
	applied := d.count("msg=applied")
	for i := 1; i <= 1000; i++ {
		replace(t, path, policies[i%len(policies)])
		applied++
		d.waitLog("msg=applied", applied)
	}
	stop.Store(true)
	wg.Wait()
	if n := squatBytes.Load(); n != 0 {
		t.Errorf("%d squatter bytes delivered during reloads", n)
	}
	if got := squat.Received(t); len(got) != 0 {
		t.Errorf("squatter read %q during reloads", got)
	}
	if ownerFail.Load() != 0 || ownerOK.Load() == 0 {
		t.Errorf("owner: %d ok, %d failed", ownerOK.Load(), ownerFail.Load())
	}
	if d.count("mode=delta") < 400 || d.count("mode=replace") < 200 {
		t.Errorf("expected both deltas and replaces: %d deltas, %d replaces", d.count("mode=delta"), d.count("mode=replace"))
	}
	t.Logf("1000 reloads: owner %d ok; squatter %d attempts, 0 bytes; %d deltas, %d replaces",
		ownerOK.Load(), squatTries.Load(), d.count("mode=delta"), d.count("mode=replace"))
}
