package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// The end-to-end tests run the real portfw binary inside the server
// namespace of a testenv.Pair, with real servers and clients of different
// uids on either side of a veth pair. nft is the oracle of what the kernel
// holds.
//
// The bind guard attaches to a cgroup this test binary makes and moves
// itself into (so every peer it starts is in it), named to portfw by
// PORTFW_BIND_GUARD_CGROUP: the host's own guard, if any, is never touched.
// TestGuardOnTheRealRoot alone uses the default, the hierarchy's root.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	// guardCgroup is the cgroup the tests' guards attach to; "" when the
	// tests do not run as root.
	guardCgroup string
)

// portfwBin builds the command once per test binary.
func portfwBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "portfw-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "portfw")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	// State files of throwaway namespaces must not pile up in /run/portfw.
	dir, err := os.MkdirTemp("", "portfw-state-")
	if err == nil {
		os.Setenv(envStateDir, dir)
	}
	leave := enterGuardCgroup()
	code := m.Run()
	leave()
	os.RemoveAll(dir)
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// enterGuardCgroup makes a cgroup below the hierarchy's root, moves this
// process into it and points portfw's guard at it. The returned function
// moves the process back and removes the cgroup (which detaches whatever
// the tests attached to it).
func enterGuardCgroup() func() {
	if os.Geteuid() != 0 {
		return func() {}
	}
	root := cgroupRootMount()
	if root == "" {
		return func() {}
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("pfw-test-e2e-%d-%s", os.Getpid(), hex.EncodeToString(b))
	cg := filepath.Join(root, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		return func() {}
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
		os.Remove(cg)
		return func() {}
	}
	guardCgroup = "/" + name
	os.Setenv(envGuardCgroup, guardCgroup)
	return func() {
		os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0)
		for i := 0; i < 100; i++ {
			if err := os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// cgroupRootMount is where this process sees the root of the cgroup v2
// hierarchy.
func cgroupRootMount() string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" {
				var st syscall.Stat_t
				if syscall.Stat(f[4], &st) == nil && st.Ino == 1 {
					return f[4]
				}
			}
		}
	}
	return ""
}

// writePolicy writes a policy file root-owned and 0644, as apply requires.
func writePolicy(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// via is how a test enters the namespace portfw runs in: `ip netns exec`
// (which remounts /sys, hiding the host's cgroup2 and bpffs) or
// `nsenter --net` (which does not). Enforcement must not depend on it.
type via string

const (
	viaIPNetnsExec via = "ip-netns-exec"
	viaNsenter     via = "nsenter"
)

var vias = []via{viaIPNetnsExec, viaNsenter}

func (v via) command(ns *testenv.NS, args ...string) *exec.Cmd {
	if v == viaNsenter {
		return exec.Command("nsenter", append([]string{"--net=" + ns.Path, "--"}, args...)...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
}

// portfwVia runs the binary in ns and returns stdout, stderr and the exit code.
func portfwVia(t testing.TB, v via, ns *testenv.NS, args ...string) (string, string, int) {
	t.Helper()
	return portfwEnv(t, v, ns, nil, args...)
}

// portfwEnv is portfwVia with more environment variables (later ones win).
func portfwEnv(t testing.TB, v via, ns *testenv.NS, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := v.command(ns, append([]string{portfwBin(t)}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run portfw %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return o.String(), e.String(), code
}

// portfw runs the binary in ns through `ip netns exec`.
func portfw(t testing.TB, ns *testenv.NS, args ...string) (string, string, int) {
	t.Helper()
	return portfwVia(t, viaIPNetnsExec, ns, args...)
}

func mustPortfwVia(t testing.TB, v via, ns *testenv.NS, args ...string) string {
	t.Helper()
	out, errOut, code := portfwVia(t, v, ns, args...)
	if code != 0 {
		t.Fatalf("portfw %s (via %s): exit %d\n%s%s", strings.Join(args, " "), v, code, out, errOut)
	}
	return out
}

func mustPortfw(t testing.TB, ns *testenv.NS, args ...string) string {
	t.Helper()
	return mustPortfwVia(t, viaIPNetnsExec, ns, args...)
}

type world struct {
	*testenv.Pair
	owner, squat, worker testenv.Cred
	via                  via
}

// setup makes a pair of namespaces, the test users, and applies policy
// (with %[1]d, %[2]d, %[3]d replaced by the owner, squatter and worker uids)
// in the server namespace through `ip netns exec`.
func setup(t *testing.T, policyFmt string) *world {
	t.Helper()
	return setupVia(t, viaIPNetnsExec, policyFmt)
}

func setupVia(t *testing.T, v via, policyFmt string) *world {
	t.Helper()
	testenv.RequireNetNS(t)
	w := &world{
		Pair:   testenv.NewPair(t),
		owner:  testenv.User(t, "pfw-owner"),
		squat:  testenv.User(t, "pfw-squat"),
		worker: testenv.User(t, "pfw-worker"),
		via:    v,
	}
	if policyFmt != "" {
		w.apply(t, policyFmt)
	}
	return w
}

// apply writes the policy (formatted like setup's) and applies it in the
// server namespace.
func (w *world) apply(t *testing.T, policyFmt string, args ...string) string {
	t.Helper()
	path := writePolicy(t, fmt.Sprintf(policyFmt, w.owner.UID, w.squat.UID, w.worker.UID))
	return mustPortfwVia(t, w.via, w.Server, append([]string{"apply", "-f", path}, args...)...)
}

func (w *world) v4(port uint16) netip.AddrPort { return netip.AddrPortFrom(w.ServerV4, port) }
func (w *world) v6(port uint16) netip.AddrPort { return netip.AddrPortFrom(w.ServerV6, port) }
func any6(port uint16) netip.AddrPort          { return netip.AddrPortFrom(netip.IPv6Unspecified(), port) }
func any4(port uint16) netip.AddrPort          { return netip.AddrPortFrom(netip.IPv4Unspecified(), port) }

// sysctlIn reads a sysctl of a namespace.
func sysctlIn(t *testing.T, ns *testenv.NS, name string) string {
	t.Helper()
	// cat, not sysctl(8): procps is not on a minimal Debian.
	return strings.TrimSpace(ns.Run(t, "cat", "/proc/sys/"+strings.ReplaceAll(name, ".", "/")))
}

// layers runs a test once with the bind guard (the default) and once with
// the nftables rules alone, each with its own namespaces: a claim that
// something is blocked must hold for both.
func layers(t *testing.T, f func(t *testing.T, guard bool, settings string)) {
	for _, guard := range []bool{true, false} {
		name, settings := "guard", "bind_guard: auto"
		if !guard {
			name, settings = "rules-only", "bind_guard: off"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, guard, settings)
		})
	}
}
