package bindguard

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/testenv"
)

// The test binary doubles as the helper process that binds as another uid
// inside a test cgroup and namespace, or applies a guard and exits. It is
// started as root, joins the namespace and drops privileges itself, on its
// one locked thread, and exits afterwards, so no thread of it ever goes back
// to the Go scheduler in a foreign namespace or with foreign credentials.
const (
	helperEnv = "PORTFW_BINDGUARD_HELPER" // "bind" or "apply"
	netnsEnv  = "PORTFW_BINDGUARD_NETNS"  // namespace file to join
	credEnv   = "PORTFW_BINDGUARD_CRED"   // "UID:GID" to bind as
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		runtime.LockOSThread()
		if err := helperMain(mode); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helperMain(mode string) error {
	if p := os.Getenv(netnsEnv); p != "" {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns: %w", err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("join netns: %w", err)
		}
		unix.Close(fd)
	}
	switch mode {
	case "apply":
		var req applyRequest
		if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		return Apply(req.Spec, req.Cgroup)
	case "bind":
		if c := os.Getenv(credEnv); c != "" {
			if err := dropTo(c); err != nil {
				return err
			}
		}
		for _, p := range os.Args[1:] {
			fmt.Println(tryBind(p))
		}
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

type applyRequest struct {
	Spec   Spec
	Cgroup string
}

// dropTo changes the credentials of this thread alone (raw syscalls, not
// the all-threads wrappers): the binds happen on this thread, and the
// process exits right after.
func dropTo(cred string) error {
	u, g, ok := strings.Cut(cred, ":")
	uid, err1 := strconv.ParseUint(u, 10, 32)
	gid, err2 := strconv.ParseUint(g, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("bad credentials %q", cred)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("setresgid: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("setresuid: %w", e)
	}
	return nil
}

// tryBind binds one socket described as "tcp4 ADDR PORT" and returns "ok"
// or the errno's name.
func tryBind(probe string) string {
	f := strings.Fields(probe)
	if len(f) != 3 {
		return "bad probe " + probe
	}
	typ := unix.SOCK_STREAM
	if strings.HasPrefix(f[0], "udp") {
		typ = unix.SOCK_DGRAM
	}
	addr, err := netip.ParseAddr(f[1])
	port, perr := strconv.Atoi(f[2])
	if err != nil || perr != nil {
		return "bad probe " + probe
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if strings.HasSuffix(f[0], "6") {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: port, Addr: addr.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: port, Addr: addr.As4()}
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "socket: " + errName(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sa); err != nil {
		return errName(err)
	}
	return "ok"
}

func errName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	return err.Error()
}

// requireGuard gates the kernel tests like cilium/ebpf does: skip where the
// guard cannot run, but fail under PORTFW_REQUIRE_NETNS=1 on a kernel new
// enough that it must (5.14: SO_NETNS_COOKIE; bind hooks granting low ports
// came in 5.12).
func requireGuard(t *testing.T) {
	t.Helper()
	testenv.RequireNetNS(t)
	err := Supported()
	if err == nil {
		return
	}
	if os.Getenv(testenv.RequireEnv) == "1" && kernelAtLeast(5, 14) {
		t.Fatalf("%v (%s=1 and the kernel is new enough, so this fails instead of skipping)", err, testenv.RequireEnv)
	}
	t.Skipf("%v", err)
}

func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || ma == major && mi >= minor
}

// testCgroup is a child of the cgroup v2 root, removed by the test's
// cleanup. Guards attached to it touch only the helpers put into it.
type testCgroup struct {
	path string
	fd   int
}

func newCgroup(t *testing.T) *testCgroup {
	t.Helper()
	root, err := CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	path := filepath.Join(root, fmt.Sprintf("portfw-test-%d-%s", os.Getpid(), hex.EncodeToString(b)))
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		// The helpers have exited, but the kernel may take a moment to
		// let go of the cgroup.
		for i := 0; ; i++ {
			err := os.Remove(path)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if i == 50 {
				t.Errorf("remove cgroup: %v", err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return &testCgroup{path: path, fd: fd}
}

// helper runs the test binary as a helper: in the namespace nsPath ("" for
// the test's own), in cgroup cg (nil for the test's own).
func helper(t *testing.T, mode, nsPath string, cg *testCgroup, cred *testenv.Cred, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, netnsEnv+"="+nsPath)
	if cred != nil {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d:%d", credEnv, cred.UID, cred.GID))
	}
	if cg != nil {
		cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd}
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper %s %v: %v\n%s", mode, args, err, stderr.String())
	}
	return stdout.String()
}

// bindCase is one bind and the outcome it must have.
type bindCase struct {
	what string // "tcp4 0.0.0.0 80"
	want string // "ok", "EPERM", "EACCES"
}

// checkBinds binds each probe as cred in a fresh helper and reports every
// outcome that differs from the expected one.
func checkBinds(t *testing.T, label, nsPath string, cg *testCgroup, cred testenv.Cred, probes ...bindCase) {
	t.Helper()
	args := make([]string, len(probes))
	for i, p := range probes {
		args[i] = p.what
	}
	got := strings.Split(strings.TrimRight(helper(t, "bind", nsPath, cg, &cred, nil, args...), "\n"), "\n")
	if len(got) != len(probes) {
		t.Fatalf("%s: helper printed %q for %d probes", label, got, len(probes))
	}
	for i, p := range probes {
		if got[i] != p.want {
			t.Errorf("%s (%v): bind %s = %s, want %s", label, cred, p.what, got[i], p.want)
		}
	}
}

// inNS runs fn on a thread that joined the namespace at nsPath. The thread
// goes back to the scheduler only once it is back in its own namespace;
// if that fails, it stays locked and dies with its goroutine. fn runs on
// another goroutine, so it must not call t.Fatal.
func inNS(t *testing.T, nsPath string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns: %w", err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join netns: %w", err)
			return
		}
		defer func() {
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("return to own netns: %w", err)
				return // the thread stays locked and exits with the goroutine
			}
			runtime.UnlockOSThread()
			errc <- nil
		}()
		fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
