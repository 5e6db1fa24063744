package bindguard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/internal/netns"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/testenv"
)

// The test binary doubles as the helper process that binds as another uid
// inside a test cgroup and namespace, or applies a guard and exits. It is
// started as root, joins the namespace and drops privileges itself, on its
// one locked thread, and exits afterwards, so no thread of it ever goes back
// to the Go scheduler in a foreign namespace or with foreign credentials.
const (
	helperEnv = "PORTFW_BINDGUARD_HELPER" // "bind", "bindloop" or "guard"
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

// guardRequest is what a "guard" helper does in its namespace.
type guardRequest struct {
	Op string // apply, remove, sweep, status
	// Policies are applied in order by one Namespace: after the first, as
	// a daemon does (only what changed, through its Builder).
	Policies []*model.Resolved
	Cgroup   string
}

type guardReply struct {
	// Incremental counts the applies that wrote only what changed.
	Incremental int
	Found       bool
	Swept       []uint64
	Info        Info
	// Applied is Applied after an apply; Info its Status then.
	Applied Info
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
	case "guard":
		var req guardRequest
		if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		ns, err := ForNamespace(req.Cgroup)
		if err != nil {
			return err
		}
		var rep guardReply
		switch req.Op {
		case "apply":
			for _, r := range req.Policies {
				if err = ns.Apply(r); err != nil {
					break
				}
			}
			rep.Incremental = ns.incremental
			if err == nil {
				if rep.Applied, err = ns.Applied(); err == nil {
					rep.Info, err = ns.Status()
				}
			}
		case "remove":
			rep.Found, err = ns.Remove()
		case "sweep":
			rep.Swept, err = ns.Sweep()
		case "status":
			rep.Info, err = ns.Status()
		default:
			err = fmt.Errorf("unknown op %q", req.Op)
		}
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(rep)
	case "bind", "bindloop":
		if c := os.Getenv(credEnv); c != "" {
			if err := dropTo(c); err != nil {
				return err
			}
		}
		if mode == "bind" {
			for _, p := range os.Args[1:] {
				fmt.Println(tryBind(p))
			}
			return nil
		}
		return bindLoop(os.Args[1:])
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// bindLoop binds each probe over and over until stdin says "stop", then
// prints how many binds of each outcome it saw, as JSON.
func bindLoop(probes []string) error {
	stop := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(stop)
	}()
	outcomes := map[string]int{}
	// Say we are running before looping, so the test can start updating.
	fmt.Println("ready")
	for {
		select {
		case <-stop:
			return json.NewEncoder(os.Stdout).Encode(outcomes)
		default:
		}
		for _, p := range probes {
			outcomes[p+" "+tryBind(p)]++
		}
	}
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

// tryBind binds one socket described as "tcp4 ADDR PORT" (tcp, udp,
// udplite or mptcp; 4 or 6) and returns "ok" or the errno's name.
func tryBind(probe string) string {
	f := strings.Fields(probe)
	if len(f) != 3 {
		return "bad probe " + probe
	}
	proto := strings.TrimRight(f[0], "46")
	typ, protocol := unix.SOCK_STREAM, 0
	switch proto {
	case "udp":
		typ = unix.SOCK_DGRAM
	case "udplite":
		typ, protocol = unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE
	case "mptcp":
		protocol = unix.IPPROTO_MPTCP
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
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, protocol)
	if err != nil {
		return "socket: " + errName(err)
	}
	defer unix.Close(fd)
	if family == unix.AF_INET6 && addr.IsUnspecified() {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
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

// requireGuard gates the kernel tests through testenv's one gate: skip where
// the guard cannot run, fail there under PORTFW_REQUIRE_NETNS=1.
func requireGuard(t *testing.T) {
	t.Helper()
	testenv.RequireNetNS(t)
	if err := Supported(); err != nil {
		testenv.Require(t, err.Error())
	}
}

// helperCmd prepares the test binary as a helper: in the namespace nsPath
// ("" for the test's own), in cgroup cg (nil for the test's own).
func helperCmd(mode, nsPath string, cg *testenv.Cgroup, cred *testenv.Cred, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, netnsEnv+"="+nsPath)
	if cred != nil {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d:%d", credEnv, cred.UID, cred.GID))
	}
	if cg != nil {
		cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD}
	}
	return cmd
}

func runHelper(t *testing.T, cmd *exec.Cmd, stdin []byte) (string, error) {
	t.Helper()
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// guardOp runs one guard operation in a helper in the namespace at nsPath,
// which exits afterwards: whatever it installed must outlive it.
func guardOp(t *testing.T, nsPath string, req guardRequest) guardReply {
	t.Helper()
	b, _ := json.Marshal(req)
	out, err := runHelper(t, helperCmd("guard", nsPath, nil, nil), b)
	if err != nil {
		t.Fatalf("guard %s in %s: %v", req.Op, nsPath, err)
	}
	var rep guardReply
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("guard %s: %v: %q", req.Op, err, out)
	}
	return rep
}

// bindCase is one bind and the outcome it must have.
type bindCase struct {
	what string // "tcp4 0.0.0.0 80"
	want string // "ok", "EPERM", "EACCES"
}

// checkBinds binds each probe as cred in a fresh helper and reports every
// outcome that differs from the expected one.
func checkBinds(t *testing.T, label, nsPath string, cg *testenv.Cgroup, cred testenv.Cred, probes ...bindCase) {
	t.Helper()
	args := make([]string, len(probes))
	for i, p := range probes {
		args[i] = p.what
	}
	out, err := runHelper(t, helperCmd("bind", nsPath, cg, &cred, args...), nil)
	if err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	got := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(got) != len(probes) {
		t.Fatalf("%s: helper printed %q for %d probes", label, got, len(probes))
	}
	for i, p := range probes {
		if got[i] != p.want {
			t.Errorf("%s (%v): bind %s = %s, want %s", label, cred, p.what, got[i], p.want)
		}
	}
}

// bindLoopHelper starts a helper that binds probes in a loop until stopped.
type bindLoopHelper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
}

func startBindLoop(t *testing.T, nsPath string, cg *testenv.Cgroup, cred testenv.Cred, probes ...string) *bindLoopHelper {
	t.Helper()
	cmd := helperCmd("bindloop", nsPath, cg, &cred, probes...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &bindLoopHelper{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
	if line, err := h.stdout.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("bind loop did not start: %q %v", line, err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	return h
}

// stop ends the loop and returns how often each probe had each outcome.
func (h *bindLoopHelper) stop(t *testing.T) map[string]int {
	t.Helper()
	fmt.Fprintln(h.stdin, "stop")
	var outcomes map[string]int
	if err := json.NewDecoder(h.stdout).Decode(&outcomes); err != nil {
		t.Fatalf("bind loop: %v", err)
	}
	h.cmd.Wait()
	return outcomes
}

// cookieOfNS is the cookie of the namespace at path.
func cookieOfNS(t *testing.T, path string) uint64 {
	t.Helper()
	c, err := netns.CookieOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
