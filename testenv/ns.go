package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NS is a network namespace created for one test and deleted by its cleanup.
type NS struct {
	Name string // unique: "pfw-<pid namespace>.<pid>-<8 hex digits>"
	Path string // /run/netns/Name, for nsenter --net and setns

	deleted bool
}

// cmdTimeout bounds every ip/nft command, so a wedged command fails the test
// instead of hanging it until the global test timeout, which skips cleanups.
const cmdTimeout = 30 * time.Second

// NewNS creates a network namespace with lo up.
func NewNS(t testing.TB) *NS {
	t.Helper()
	RequireNetNS(t)
	n := &NS{Name: newName()}
	n.Path = "/run/netns/" + n.Name
	if _, stderr, err := run(nil, "ip", "netns", "add", n.Name); err != nil {
		t.Fatalf("add netns: %v: %s", err, stderr)
	}
	t.Cleanup(func() {
		if n.deleted {
			return
		}
		// Processes still inside would keep the namespace alive without a
		// name; the peers' own cleanups ran before this one and killed them.
		if _, stderr, err := run(nil, "ip", "netns", "del", n.Name); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.Name, err, stderr)
		}
	})
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// Delete deletes the namespace now (its name; it dies with the last
// process or file holding it).
func (n *NS) Delete(t testing.TB) {
	t.Helper()
	if _, stderr, err := run(nil, "ip", "netns", "del", n.Name); err != nil {
		t.Fatalf("delete netns %s: %v: %s", n.Name, err, stderr)
	}
	n.deleted = true
}

// IP runs "ip -n NAME args..." and fails the test on error.
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	stdout, stderr, err := run(nil, "ip", append([]string{"-n", n.Name}, args...)...)
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.Name, strings.Join(args, " "), err, stderr)
	}
	return stdout
}

// Exec runs a command as root inside the namespace (ip netns exec) and
// returns its output; err is non-nil if it could not run or exited non-zero.
func (n *NS) Exec(args ...string) (stdout, stderr string, err error) {
	return run(nil, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Run is Exec that fails the test, with the command's output, on error.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	stdout, stderr, err := n.Exec(args...)
	if err != nil {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	return stdout
}

// Nft loads an nft script into the namespace (nft -f -) and fails the test if
// nft rejects it.
func (n *NS) Nft(t testing.TB, script string) {
	t.Helper()
	_, stderr, err := run([]byte(script), "ip", "netns", "exec", n.Name, "nft", "-f", "-")
	if err != nil {
		t.Fatalf("%v\nstderr:\n%s\nscript:\n%s", err, stderr, script)
	}
}

// Sysctl sets a sysctl of the namespace, e.g. Sysctl(t,
// "net.ipv4.tcp_syncookies", "2"): the net.* sysctls are per namespace, so
// this changes nothing outside it.
func (n *NS) Sysctl(t testing.TB, name, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	// /proc/sys/net resolves to the namespace of the process that opens it.
	n.Run(t, "sh", "-c", `printf '%s\n' "$1" > "$2"`, "sh", value, path)
}

// Counter returns a kernel network counter of the namespace by its nstat
// name, e.g. "TcpExtSyncookiesSent" or "TcpExtListenOverflows": tests use it
// to prove a packet path was really taken.
func (n *NS) Counter(t testing.TB, name string) uint64 {
	t.Helper()
	// -a: absolute values; -s: leave nstat's history file, which is shared
	// by all namespaces, alone; -z: list zero counters too.
	out := n.Run(t, "nstat", "-asz", name)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == name {
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("parse counter %s: %v", name, err)
			}
			return v
		}
	}
	t.Fatalf("no counter %s in nstat output:\n%s", name, out)
	return 0
}

// Fd opens the namespace and returns the file descriptor, for netlink
// connections that work inside it (nftables.WithNetNSFd). It is closed by the
// test's cleanup. It is a raw descriptor rather than an *os.File so that no
// finalizer can close it while the caller still uses the number.
func (n *NS) Fd(t testing.TB) int {
	t.Helper()
	fd, err := syscall.Open(n.Path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns %s: %v", n.Name, err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fd
}

func run(stdin []byte, name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return o.String(), e.String(), fmt.Errorf("run %s %s: %w", name, strings.Join(args, " "), err)
	}
	return o.String(), e.String(), nil
}

// HTTPClient returns an HTTP client whose connections are made in the
// namespace, for talking to a server listening on its loopback (a daemon's
// metrics). Each connection's socket is created on an OS thread that
// enters the namespace and dies with its goroutine, so no thread of the
// test returns to the scheduler in another namespace.
func (n *NS) HTTPClient() *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			fd, err := unix.Open(n.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("enter %s: %w", n.Name, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: 10 * time.Second}
}
