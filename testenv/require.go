package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// RequireEnv names the variable that turns a skip into a failure. CI sets it
// so the tests that matter most can never be skipped silently.
const RequireEnv = "PORTFW_REQUIRE_NETNS"

// tools are the programs the harness runs; all must be present.
var tools = []string{"ip", "nft", "nsenter", "useradd", "strace"}

var probe struct {
	once   sync.Once
	reason string // empty: network namespace tests can run
}

// RequireNetNS skips the test unless it runs as root on a system where it can
// create network namespaces and finds the tools the harness needs. With
// PORTFW_REQUIRE_NETNS=1 it fails instead of skipping.
func RequireNetNS(t testing.TB) {
	t.Helper()
	probe.once.Do(func() { probe.reason = probeNetNS() })
	Require(t, probe.reason)
}

// Require is the one gate of the privileged tests: when missing is not
// empty (what the host lacks), the test skips saying how to run it, or,
// with PORTFW_REQUIRE_NETNS=1, fails. No privileged test skips otherwise.
func Require(t testing.TB, missing string) {
	t.Helper()
	if missing == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("testenv: %s (%s=1, so this fails instead of skipping)", missing, RequireEnv)
	}
	t.Skipf("testenv: %s; these tests need root, network namespaces and the tools `make deps` installs: run `sudo make test`", missing)
}

func probeNetNS() string {
	if os.Geteuid() != 0 {
		return "not running as root"
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s not found in PATH (`make deps` installs it)", tool)
		}
	}
	name := newName()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot create a network namespace: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot delete network namespace %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	removeStale()
	removeStaleCgroups()
	return ""
}

// newName returns a namespace name unique across concurrent test binaries.
// It carries the pid of the test binary, qualified by its pid namespace, so
// that a later run can tell whether its creator is gone (see removeStale).
func newName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s%s-%s", nsPrefix, owner(os.Getpid()), hex.EncodeToString(b))
}

const nsPrefix = "pfw-"

// owner is "PIDNS.PID"; the pid namespace is 0 if unknown.
func owner(pid int) string {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		st.Ino = 0
	}
	return fmt.Sprintf("%d.%d", st.Ino, pid)
}

// removeStale deletes namespaces left by test binaries that died without
// running their cleanups (go test -timeout kills them mid-test). Their peers
// are gone already, having seen their stdin close; only the names remain.
// A namespace whose creator is alive, or runs in another pid namespace
// (another container sharing /run/netns), is never touched.
func removeStale() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	self := owner(os.Getpid())
	pidns, _, _ := strings.Cut(self, ".")
	for _, e := range entries {
		creator, _, ok := strings.Cut(strings.TrimPrefix(e.Name(), nsPrefix), "-")
		ns, pidText, ok2 := strings.Cut(creator, ".")
		if !strings.HasPrefix(e.Name(), nsPrefix) || !ok || !ok2 || ns != pidns || ns == "0" {
			continue
		}
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// RequireTools is Require for tests that run programs `make deps`
// installs (groff for the man pages, zsh for its completion).
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Require(t, fmt.Sprintf("%s not found in PATH (`make deps` installs it)", n))
			return
		}
	}
}

// ReplaceFile writes text next to path and renames it over path, as
// editors and config-management tools do (a watcher sees a rename, never
// a half-written file).
func ReplaceFile(t testing.TB, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
