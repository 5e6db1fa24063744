package main

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portfw/portfw/internal/netns"
	"github.com/portfw/portfw/testenv"
)

// Races, restarts and bad input (issue 12), each in namespaces of its own
// with the real binary.

// stateFile is where portfw keeps the state of ns.
func stateFile(t *testing.T, ns *testenv.NS) string {
	t.Helper()
	cookie, err := netns.CookieOf(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(os.Getenv(envStateDir), fmt.Sprintf("netns-%d.json", cookie))
}

// lowered: port 80 owned by the owner, the threshold set to 80 by number,
// the rules alone (the table's root-only entries are then all that keeps
// 81-1023 from others). raised: the same table without a low port.
const (
	loweredPolicy = `version: 1
settings: { bind_guard: off, unprivileged_port_start: 80 }
reservations:
  - name: web
    ports: [80, 8080]
    protocols: [tcp]
    owner: { users: [%[1]d] }
`
	raisedPolicy = `version: 1
settings: { bind_guard: off, unprivileged_port_start: auto }
reservations:
  - name: web
    ports: [8080]
    protocols: [tcp]
    owner: { users: [%[1]d] }
`
)

// TestConcurrentApplies: 25 pairs of applies at once in one namespace, one
// lowering the threshold to 80 and one not. Whatever the order, the
// namespace ends consistent: a threshold of 80 only with the table that
// reserves 81-1023 for root, and the state remembering 1024; a final
// remove restores 1024.
func TestConcurrentApplies(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	lowered := writePolicy(t, fmt.Sprintf(loweredPolicy, w.owner.UID))
	raised := writePolicy(t, fmt.Sprintf(raisedPolicy, w.owner.UID))
	ends := map[string]int{}
	for i := range 25 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failures []string
		for _, path := range []string{lowered, raised} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, errOut, code := portfw(t, w.Server, "apply", "-f", path)
				if code != 0 {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("exit %d: %s%s", code, out, errOut))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(failures) > 0 {
			t.Fatalf("pair %d: an apply failed (the lock should make the other wait): %v", i, failures)
		}
		got := sysctlIn(t, w.Server, threshold)
		table := w.Server.Run(t, "nft", "list", "table", "inet", "portfw")
		guarded := strings.Contains(table, `tcp . 81-1023 comment "_guard"`)
		switch got {
		case "80":
			if !guarded {
				t.Fatalf("pair %d: threshold 80 without the root-only entries:\n%s", i, table)
			}
			st, err := os.ReadFile(stateFile(t, w.Server))
			if err != nil || !strings.Contains(string(st), `"unprivileged_port_start_original": 1024`) {
				t.Fatalf("pair %d: threshold 80 but the state does not remember 1024: %v\n%s", i, err, st)
			}
		case "1024":
			if guarded {
				t.Fatalf("pair %d: threshold 1024 with the lowered policy's table", i)
			}
		default:
			t.Fatalf("pair %d: threshold %s", i, got)
		}
		ends[got]++
	}
	t.Logf("25 pairs ended with the threshold at: %v", ends)
	mustPortfw(t, w.Server, "remove")
	if got := sysctlIn(t, w.Server, threshold); got != "1024" {
		t.Errorf("after remove the threshold is %s, want 1024", got)
	}
}

// TestStateNotInherited: a namespace deleted without remove leaves its
// state behind; a new namespace, even one that gets the same inode (the
// kernel reuses them at once), never takes it for its own: state is keyed
// by the namespace cookie, which is never reused.
func TestStateNotInherited(t *testing.T) {
	t.Parallel()
	testenv.RequireNetNS(t)
	owner := testenv.User(t, "pfw-owner")
	path := writePolicy(t, fmt.Sprintf(loweredPolicy, owner.UID))
	old := testenv.NewNS(t)
	old.Sysctl(t, threshold, "0") // what a container runtime might leave
	mustPortfw(t, old, "apply", "-f", path)
	if got := sysctlIn(t, old, threshold); got != "80" {
		t.Fatalf("threshold %s, want 80", got)
	}
	oldState := stateFile(t, old)
	var st syscall.Stat_t
	if err := syscall.Stat(old.Path, &st); err != nil {
		t.Fatal(err)
	}
	oldInode := st.Ino
	old.Delete(t)
	if _, err := os.Stat(oldState); err != nil {
		t.Fatalf("the deleted namespace's state file should still be there for this test: %v", err)
	}
	fresh := testenv.NewNS(t)
	syscall.Stat(fresh.Path, &st)
	t.Logf("inode reused by the new namespace: %v", st.Ino == oldInode)
	if stateFile(t, fresh) == oldState {
		t.Fatal("the new namespace has the deleted one's state key")
	}
	mustPortfw(t, fresh, "apply", "-f", path)
	out := mustPortfw(t, fresh, "status")
	if !strings.Contains(out, "lowered by portfw from 1024") {
		t.Errorf("the new namespace's original threshold should be its own 1024:\n%s", out)
	}
	mustPortfw(t, fresh, "remove")
	if got := sysctlIn(t, fresh, threshold); got != "1024" {
		t.Errorf("after remove %s, want 1024 (not the deleted namespace's 0)", got)
	}
}

// TestForgedState: a state file whose recorded cookie is not its
// namespace's (copied from elsewhere, or a guess) is refused by apply with
// the way out; remove then restores the safest values, never lower ones.
func TestForgedState(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	path := writePolicy(t, fmt.Sprintf(loweredPolicy, w.owner.UID))
	mustPortfw(t, w.Server, "apply", "-f", path)
	file := stateFile(t, w.Server)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	forged := regexp.MustCompile(`"netns_cookie": \d+`).ReplaceAllString(string(data), `"netns_cookie": 1`)
	if forged == string(data) {
		t.Fatalf("no cookie in the state file to forge:\n%s", data)
	}
	forged = strings.Replace(forged, `"unprivileged_port_start_original": 1024`, `"unprivileged_port_start_original": 0`, 1)
	for name, text := range map[string]string{"forged cookie": forged, "garbage": "{not json"} {
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := portfw(t, w.Server, "apply", "-f", path)
		if code != 1 || !strings.Contains(errOut, "state file is corrupt") || !strings.Contains(errOut, "portfw remove") {
			t.Errorf("%s: apply: exit %d, want 1 naming the way out\n%s%s", name, code, out, errOut)
		}
		out, errOut, code = portfw(t, w.Server, "remove")
		if code != 0 || !strings.Contains(errOut, "restored the safest values") {
			t.Errorf("%s: remove: exit %d\n%s%s", name, code, out, errOut)
		}
		if got := sysctlIn(t, w.Server, threshold); got != "1024" {
			t.Errorf("%s: after remove the threshold is %s, want 1024 (never the forged 0)", name, got)
		}
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			t.Errorf("%s: remove left the state file: %v", name, err)
		}
		mustPortfw(t, w.Server, "apply", "-f", path) // starts over
	}
}

// TestTwoDaemons: a second daemon in a namespace, for any table, refuses to
// start and names the first one's pid; a one-shot apply waits its --wait
// and fails the same way; the first daemon carries on alone.
func TestTwoDaemons(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	path := writePolicy(t, w.policy("bind_guard: off"))
	d := startDaemon(t, viaIPNetnsExec, w.Server, path)
	pid := strconv.Itoa(d.cmd.Process.Pid)
	other := writePolicy(t, strings.Replace(w.policy("bind_guard: off"), "{ bind_guard: off }", "{ bind_guard: off, table: second }", 1))
	for _, p := range []string{path, other} {
		start := time.Now()
		out, errOut, code := portfw(t, w.Server, "watch", "-f", p)
		if code == 0 || !strings.Contains(errOut, "another portfw") || !strings.Contains(errOut, pid) {
			t.Errorf("second daemon (%s): exit %d, want a refusal naming pid %s\n%s%s", p, code, pid, out, errOut)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("the second daemon took %v to give up; it should refuse at once", time.Since(start))
		}
	}
	out, errOut, code := portfw(t, w.Server, "apply", "--wait", "300ms", "-f", path)
	if code != 1 || !strings.Contains(errOut, "after waiting 300ms") || !strings.Contains(errOut, pid) {
		t.Errorf("apply while the daemon runs: exit %d\n%s%s", code, out, errOut)
	}
	if tables := w.Server.Run(t, "nft", "list", "tables"); strings.Contains(tables, "second") {
		t.Errorf("the refused daemon installed its table: %s", tables)
	}
	// The first daemon still repairs drift, and only it.
	w.Server.Run(t, "nft", "delete", "table", "inet", "portfw")
	d.waitLog("drift repaired", 1)
	time.Sleep(200 * time.Millisecond)
	if n := d.count("drift repaired"); n != 1 {
		t.Errorf("%d repairs for one deletion:\n%s", n, d.logText())
	}
}

// TestTableRename: changing settings.table replaces the old table with the
// new one in one transaction: one generation, in which the old table is
// deleted and the new one added.
func TestTableRename(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	first := writePolicy(t, w.policy("bind_guard: off, table: before"))
	mustPortfw(t, w.Server, "apply", "-f", first)
	mon := exec.Command("nsenter", "--net="+w.Server.Path, "--", "nft", "monitor")
	stdout, err := mon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Process.Kill(); mon.Wait() }) // also when a check fails first
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The monitor is listening once it reports a marker commit.
	for i := 0; ; i++ {
		w.Server.Run(t, "nft", "add", "table", "inet", "marker")
		if waitLine(lines, "add table inet marker", 200*time.Millisecond) {
			if !waitLine(lines, "# new generation", time.Second) { // the marker's commit
				t.Fatal("nft monitor showed no generation for the marker")
			}
			break
		}
		if i == 25 {
			t.Fatal("nft monitor shows nothing")
		}
		w.Server.Run(t, "nft", "delete", "table", "inet", "marker")
	}
	out := mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, w.policy("bind_guard: off, table: after")))
	if !strings.Contains(out, "table inet before (the policy's table was renamed; removed in the same transaction)") {
		t.Errorf("apply does not say the old table went:\n%s", out)
	}
	w.Server.Run(t, "nft", "delete", "table", "inet", "marker")
	var seen []string
	for l := range lines {
		if strings.Contains(l, "delete table inet marker") {
			break
		}
		seen = append(seen, l)
	}
	gens, del, add := 0, -1, -1
	for i, l := range seen {
		switch {
		case strings.HasPrefix(l, "# new generation"):
			gens++
		case l == "delete table inet before":
			del = i
		case strings.HasPrefix(l, "add table inet after"):
			add = i
		}
	}
	if gens != 1 || del < 0 || add < 0 {
		t.Errorf("want one generation deleting inet before and adding inet after; the monitor saw %d generations:\n%s", gens, strings.Join(seen, "\n"))
	}
	if tables := w.Server.Run(t, "nft", "list", "tables"); strings.Contains(tables, "before") || !strings.Contains(tables, "after") {
		t.Errorf("tables after the rename:\n%s", tables)
	}
	mustPortfw(t, w.Server, "remove")
	if tables := w.Server.Run(t, "nft", "list", "tables"); strings.Contains(tables, "after") {
		t.Errorf("remove without a policy left the renamed table (the state names it):\n%s", tables)
	}
}

// waitLine reads lines until one contains want (true) or for at most wait.
func waitLine(lines <-chan string, want string, wait time.Duration) bool {
	timeout := time.After(wait)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return false
			}
			if strings.Contains(l, want) {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// TestRemoveWithBrokenPolicy: remove needs no valid policy, and finds the
// table in the state when the policy named another.
func TestRemoveWithBrokenPolicyNetNS(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(loweredPolicy, w.owner.UID)))
	broken := writePolicy(t, "version: 1\nreservations: [oops\n")
	out, errOut, code := portfw(t, w.Server, "remove", "-f", broken)
	if code != 0 || !strings.Contains(out, "removed table inet portfw") {
		t.Errorf("remove -f broken.yaml: exit %d\n%s%s", code, out, errOut)
	}
	if got := sysctlIn(t, w.Server, threshold); got != "1024" {
		t.Errorf("threshold after remove %s, want 1024", got)
	}
}

// readOnlyCmd is a command run in ns with /proc/sys read-only, as in a
// container that is not privileged.
func readOnlyCmd(ns *testenv.NS, args ...string) *exec.Cmd {
	script := "mount -o bind,ro /proc/sys /proc/sys && exec nsenter --net=" + ns.Path + " -- " + strings.Join(args, " ")
	return exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
}

// readOnlyProcSys runs portfw in ns with /proc/sys read-only.
func readOnlyProcSys(t *testing.T, ns *testenv.NS, args ...string) (string, string, int) {
	t.Helper()
	cmd := readOnlyCmd(ns, append([]string{portfwBin(t)}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// TestReadOnlyProcSys: with /proc/sys read-only, a policy that needs no
// sysctl change applies; one that reserves an ephemeral port applies with a
// warning saying what could not be done; one that must move the threshold
// fails before touching the kernel.
func TestReadOnlyProcSys(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	plain := writePolicy(t, w.policy("bind_guard: off"))
	out, errOut, code := readOnlyProcSys(t, w.Server, "apply", "-f", plain)
	if code != 0 {
		t.Fatalf("apply of a policy needing no sysctl: exit %d\n%s%s", code, out, errOut)
	}
	ephemeral := writePolicy(t, w.policy("bind_guard: off")+"  - name: eph\n    ports: [40000]\n    owner: { users: [1] }\n")
	out, errOut, code = readOnlyProcSys(t, w.Server, "apply", "-f", ephemeral)
	if code != 0 || !strings.Contains(errOut, "cannot reserve ports 40000 in the ephemeral range") || !strings.Contains(out, "+ eph") {
		t.Errorf("apply with an ephemeral port on a read-only /proc/sys: exit %d\n%s%s", code, out, errOut)
	}
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_local_reserved_ports"); got != "" {
		t.Errorf("ip_local_reserved_ports %q on a read-only /proc/sys", got)
	}
	before := w.Server.Run(t, "nft", "list", "ruleset")
	lowered := writePolicy(t, fmt.Sprintf(loweredPolicy, w.owner.UID))
	out, errOut, code = readOnlyProcSys(t, w.Server, "apply", "-f", lowered)
	if code != 1 || !strings.Contains(errOut, "cannot set net.ipv4.ip_unprivileged_port_start to 80") || !strings.Contains(errOut, "nothing was changed") {
		t.Errorf("apply that must lower the threshold on a read-only /proc/sys: exit %d\n%s%s", code, out, errOut)
	}
	if after := w.Server.Run(t, "nft", "list", "ruleset"); after != before {
		t.Error("the refused apply changed the ruleset")
	}
	out, errOut, code = readOnlyProcSys(t, w.Server, "remove")
	if code != 0 {
		t.Errorf("remove on a read-only /proc/sys: exit %d\n%s%s", code, out, errOut)
	}

	// The daemon there: it applies, says once what it could not do, and
	// its rechecks find the kernel in sync instead of failing each time.
	d := startDaemonCmd(t, readOnlyCmd(w.Server, daemonArgs(t, ephemeral, "--recheck", "20ms")...))
	time.Sleep(500 * time.Millisecond)
	log := d.logText()
	if strings.Count(log, "cannot reserve ports 40000") != 1 || strings.Contains(log, "level=ERROR") || !strings.Contains(log, "msg=applied") {
		t.Errorf("daemon on a read-only /proc/sys:\n%s", log)
	}
	if !tableHas(t, w.Server, `tcp . 40000 comment "eph"`) {
		t.Error("the daemon did not install the table")
	}
}

// TestEphemeralExhaustion: a policy that would leave fewer than 1024
// ephemeral ports is refused, naming the reservations, before anything
// changes; outgoing connections keep working.
func TestEphemeralExhaustion(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	path := writePolicy(t, fmt.Sprintf(`version: 1
settings: { bind_guard: off }
reservations:
  - name: greedy
    ports: ["30000-65535"]
    owner: { users: [%d] }
`, w.owner.UID))
	out, errOut, code := portfw(t, w.Server, "apply", "-f", path)
	if code != 1 || !strings.Contains(errOut, "too few ephemeral ports left") || !strings.Contains(errOut, "greedy at "+path+":4:5") {
		t.Errorf("apply of a policy starving the ephemeral range: exit %d\n%s%s", code, out, errOut)
	}
	if tables := w.Server.Run(t, "nft", "list", "tables"); tables != "" {
		t.Errorf("the refused apply installed %s", tables)
	}
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_local_reserved_ports"); got != "" {
		t.Errorf("ip_local_reserved_ports %q after a refused apply", got)
	}
	srv := w.Client.Serve(t, testenv.ServeConfig{Addr: any6(9999)})
	testenv.Delivered(t, w.Server.Dial(t, testenv.DialConfig{Addr: netip.AddrPortFrom(w.ClientV4, 9999), As: w.squat}), srv.Reply)
}

// TestPolicySizeCap: a policy over 16 MiB is refused before it is parsed,
// quickly and with little memory; a policy with thousands of errors prints
// the first 100 and a count.
func TestPolicySizeCap(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	big := filepath.Join(t.TempDir(), "big.yaml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("version: 1\nreservations:\n")
	line := "  - { name: r, ports: [1], owner: { users: [1] } }\n"
	for written := 0; written <= 17<<20; written += len(line) {
		f.WriteString(line)
	}
	f.Close()
	out, errOut, code := portfw(t, w.Server, "apply", "-f", big)
	if code != 1 || !strings.Contains(errOut, "(16 MiB) limit") {
		t.Errorf("17 MiB policy: exit %d\n%s%s", code, out, errOut[:min(len(errOut), 2000)])
	}
	many := new(strings.Builder)
	many.WriteString("version: 1\nreservations:\n")
	for i := range 5000 {
		fmt.Fprintf(many, "  - { name: r%d, ports: [0], owner: { users: [1] } }\n", i)
	}
	_, errOut, code = portfw(t, w.Server, "check", "-f", writePolicy(t, many.String()))
	if lines := strings.Count(errOut, "\n"); code != 1 || lines > 110 || !strings.Contains(errOut, "and 4900 more") {
		t.Errorf("5000 errors: exit %d, %d lines\n%s", code, lines, errOut[:min(len(errOut), 3000)])
	}
}

// TestAncestorPermissions: like sshd's StrictModes, every directory above
// the policy must be root's and not writable by others (sticky root-owned
// ones such as /tmp excepted): otherwise another user could swap the
// directory and own any port. check refuses it as apply does.
func TestAncestorPermissions(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	base := t.TempDir() // under /tmp: root-owned and sticky, allowed
	grand := filepath.Join(base, "shared")
	parent := filepath.Join(grand, "portfw")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(parent, "policy.yaml")
	if err := os.WriteFile(path, []byte(w.policy("bind_guard: off")), 0o644); err != nil {
		t.Fatal(err)
	}
	mustPortfw(t, w.Server, "check", "-f", path)
	for name, prepare := range map[string]func() error{
		"writable by others": func() error { return os.Chmod(grand, 0o777) },
		"owned by a user":    func() error { os.Chmod(grand, 0o755); return os.Chown(grand, int(w.squat.UID), int(w.squat.GID)) },
	} {
		if err := prepare(); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"check", "apply"} {
			out, errOut, code := portfw(t, w.Server, cmd, "-f", path)
			if code != 1 || !strings.Contains(errOut, grand) || !strings.Contains(errOut, "move the policy") {
				t.Errorf("%s, %s: exit %d\n%s%s", name, cmd, code, out, errOut)
			}
		}
		if tables := w.Server.Run(t, "nft", "list", "tables"); tables != "" {
			t.Errorf("%s: a refused apply installed %s", name, tables)
		}
		os.Chown(grand, 0, 0)
	}
	if _, errOut, code := portfw(t, w.Server, "apply", "--insecure-policy-perms", "-f", path); code != 0 {
		t.Errorf("--insecure-policy-perms: exit %d\n%s", code, errOut)
	}
}

// netlinkBytes runs portfw in ns under strace and returns the bytes it
// received from nf_tables over netlink.
func netlinkBytes(t *testing.T, ns *testenv.NS, args ...string) int {
	t.Helper()
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command("nsenter", append([]string{"--net=" + ns.Path, "--", "strace", "-f", "-qq", "-yy", "-e", "trace=recvmsg,recvfrom",
		"-e", "signal=none", "-o", trace, portfwBin(t)}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("portfw %v under strace: %v\n%s", args, err, out)
	}
	data, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	ret := regexp.MustCompile(`= (\d+)$`)
	total := 0
	// With -f, a call another thread interrupts is split in two lines:
	// "PID recvmsg(5<NETLINK:[NETFILTER:...]>, ... <unfinished ...>", then
	// "PID <... recvmsg resumed>..., = N", which names no socket.
	unfinished := map[string]bool{} // pids inside a netfilter receive
	for _, line := range strings.Split(string(data), "\n") {
		pid, _, _ := strings.Cut(line, " ")
		netfilter := strings.Contains(line, "<NETLINK:[NETFILTER:")
		switch {
		case strings.HasSuffix(line, "<unfinished ...>"):
			unfinished[pid] = netfilter
			continue
		case strings.Contains(line, " resumed>"):
			netfilter = unfinished[pid]
			delete(unfinished, pid)
		}
		if !netfilter {
			continue
		}
		if m := ret.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			total += n
		}
	}
	return total
}

// TestInSyncApplyReadsNothing: at 10k reservations, an apply whose policy,
// users and sysctls are unchanged and whose ruleset generation is still
// portfw's own reads nothing back from the kernel. The control: once
// another process commits, the same apply reads the whole table back.
func TestInSyncApplyReadsNothing(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nsettings: { bind_guard: off }\nreservations:\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "  - { name: r%d, ports: [%d], owner: { users: [%d] } }\n", i, 10000+i, 100000+i)
	}
	path := writePolicy(t, b.String())
	mustPortfw(t, w.Server, "apply", "-f", path)
	inSync := netlinkBytes(t, w.Server, "apply", "-f", path)
	w.Server.Run(t, "nft", "add", "table", "inet", "someone-else")
	readBack := netlinkBytes(t, w.Server, "apply", "-f", path)
	t.Logf("netlink bytes received from nf_tables: in sync %d, after another commit %d", inSync, readBack)
	if readBack < 1<<19 { // the whole table is about 1 MB
		t.Fatalf("control: the apply after another commit received only %d bytes; it should have read the 10k table back", readBack)
	}
	if inSync*100 > readBack {
		t.Errorf("the in-sync apply received %d bytes, more than 1%% of a read-back (%d)", inSync, readBack)
	}
	// A one-owner change, by a new process: computed from the previous
	// apply's saved record, not from a read of the table; the kernel then
	// holds exactly the edited policy's table (diff reads it and agrees).
	editedText := strings.Replace(b.String(), "users: [100007] }", "users: [777777] }", 1)
	if editedText == b.String() {
		t.Fatal("setup: the edit changed nothing")
	}
	edited := writePolicy(t, editedText)
	if out, _, code := portfw(t, w.Server, "diff", "-f", edited); code != 1 || !strings.Contains(out, "r7") {
		t.Fatalf("setup: diff before the change: exit %d\n%s", code, out)
	}
	change := netlinkBytes(t, w.Server, "apply", "-f", edited)
	t.Logf("netlink bytes received for a one-owner change: %d", change)
	if change*100 > readBack {
		t.Errorf("the one-owner change received %d bytes, more than 1%% of a read-back (%d)", change, readBack)
	}
	if out, errOut, code := portfw(t, w.Server, "diff", "-f", edited); code != 0 {
		t.Errorf("after the change from the record, diff against the kernel: exit %d\n%s%s", code, out, errOut)
	}
}
