package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// These tests run the real portfw binary inside the server namespace of a
// testenv.Pair, with real servers and clients of different uids on either
// side of a veth pair. nft is the oracle of what the kernel holds.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
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
		os.Setenv("PORTFW_STATE_DIR", dir)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
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

// portfw runs the binary in ns and returns stdout, stderr and the exit code.
func portfw(t testing.TB, ns *testenv.NS, args ...string) (string, string, int) {
	t.Helper()
	stdout, stderr, err := ns.Exec(append([]string{portfwBin(t)}, args...)...)
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run portfw %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout, stderr, code
}

func mustPortfw(t testing.TB, ns *testenv.NS, args ...string) string {
	t.Helper()
	out, errOut, code := portfw(t, ns, args...)
	if code != 0 {
		t.Fatalf("portfw %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

type world struct {
	*testenv.Pair
	owner, squat, worker testenv.Cred
}

// setup makes a pair of namespaces, the test users, and applies policy
// (with %[1]d, %[2]d, %[3]d replaced by the owner, squatter and worker uids)
// in the server namespace.
func setup(t *testing.T, policyFmt string) *world {
	t.Helper()
	testenv.RequireNetNS(t)
	w := &world{
		Pair:   testenv.NewPair(t),
		owner:  testenv.User(t, "pfw-owner"),
		squat:  testenv.User(t, "pfw-squat"),
		worker: testenv.User(t, "pfw-worker"),
	}
	if policyFmt != "" {
		path := writePolicy(t, fmt.Sprintf(policyFmt, w.owner.UID, w.squat.UID, w.worker.UID))
		mustPortfw(t, w.Server, "apply", "-f", path)
	}
	return w
}

func (w *world) v4(port uint16) netip.AddrPort { return netip.AddrPortFrom(w.ServerV4, port) }
func (w *world) v6(port uint16) netip.AddrPort { return netip.AddrPortFrom(w.ServerV6, port) }
func any6(port uint16) netip.AddrPort          { return netip.AddrPortFrom(netip.IPv6Unspecified(), port) }

const webPolicy = `version: 1
reservations:
  - name: web
    ports: [8080, 8443]
    protocols: [tcp]
    owner: { users: [%[1]d] }
  - name: sip
    ports: [5060]
    protocols: [udp]
    owner: { users: [%[1]d] }
`

func TestOwnerServed(t *testing.T) {
	w := setup(t, webPolicy)
	srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.owner})
	for _, addr := range []netip.AddrPort{w.v4(8080), w.v6(8080)} {
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: addr, As: w.squat}), srv.Reply)
	}
	udp := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.owner})
	for _, addr := range []netip.AddrPort{w.v4(5060), w.v6(5060)} {
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: addr}), udp.Reply)
	}
}

func TestRootServedUnlessDisallowed(t *testing.T) {
	w := setup(t, webPolicy)
	srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: testenv.Root})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}), srv.Reply)

	strict := writePolicy(t, "version: 1\nsettings: { allow_root: false }\n"+strings.SplitN(fmt.Sprintf(webPolicy, w.owner.UID), "\n", 2)[1])
	mustPortfw(t, w.Server, "apply", "-f", strict)
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}))
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8080)}))
}

// TestBindThenDrop: a listener made by root (nginx's master) or by the owner,
// whose connections a worker of another uid accepts and answers, is served:
// accept() gives the connection's socket the worker's credentials, and the
// connection is OWNED from the listener's SYN-ACK on.
func TestBindThenDrop(t *testing.T) {
	w := setup(t, webPolicy)
	root := testenv.Root
	for _, tc := range []struct {
		name     string
		listenAs *testenv.Cred
		port     uint16
	}{{"root listens", &root, 8080}, {"owner listens", &w.owner, 8443}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(tc.port), ListenAs: tc.listenAs, As: w.worker})
			if !srv.Cred.Is(w.worker) {
				t.Fatalf("server runs as %+v, want the worker %v", srv.Cred, w.worker)
			}
			for _, addr := range []netip.AddrPort{w.v4(tc.port), w.v6(tc.port)} {
				testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: addr}), srv.Reply)
			}
		})
	}
}

func TestSquatterTCP(t *testing.T) {
	w := setup(t, webPolicy)
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.squat})
	for _, addr := range []netip.AddrPort{w.v4(8080), w.v6(8080)} {
		testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: addr, Request: "secret"}))
	}
	if got := sq.Received(t); len(got) != 0 {
		t.Errorf("squatter read %q", got)
	}
	// Unreserved ports are untouched for the same user.
	free := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(9090), As: w.squat})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(9090)}), free.Reply)
}

// TestSquatterSyncookies: SYN-ACKs sent as syncookies carry no socket.
// A squatter forces them with listen(fd, 0) and a delayed accept (whether
// the kernel then sends cookies depends on timing), and tcp_syncookies=2
// makes every SYN-ACK a cookie, deterministically (the kernel's counter
// proves the path was taken). Several clients at once get nothing, and the
// squatter reads nothing. TestNaiveRuleLeaks shows the same squatter
// getting through a plain skuid rule.
func TestSquatterSyncookies(t *testing.T) {
	w := setup(t, webPolicy)
	run := func(t *testing.T, port uint16) {
		sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.squat, ZeroBacklog: true, AcceptDelay: 2 * time.Second})
		for _, addr := range []netip.AddrPort{w.v4(port), w.v6(port)} {
			for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: addr, Request: "secret", Timeout: 4 * time.Second}, 6) {
				testenv.Blocked(t, r)
			}
		}
		if got := sq.Received(t); len(got) != 0 {
			t.Errorf("squatter read %q through the syncookie path", got)
		}
	}
	t.Run("backlog 0", func(t *testing.T) { run(t, 8080) })
	t.Run("syncookies=2", func(t *testing.T) {
		w.Server.Sysctl(t, "net.ipv4.tcp_syncookies", "2")
		before := w.Server.Counter(t, "TcpExtSyncookiesSent")
		run(t, 8443)
		if w.Server.Counter(t, "TcpExtSyncookiesSent") == before {
			t.Error("no syncookie was sent; the test did not exercise the cookie path")
		}
	})
}

// TestSquatterOrphan: a squatter that writes its reply and closes at once
// leaves the reply's retransmits and its FIN to an orphaned socket, which
// carries no owner. With a cookie handshake (listen(fd, 0)) this leaks
// through a plain skuid rule (TestNaiveRuleLeaks); here nothing arrives.
func TestSquatterOrphan(t *testing.T) {
	w := setup(t, webPolicy)
	for _, zero := range []bool{false, true} {
		t.Run(fmt.Sprintf("backlog0=%t", zero), func(t *testing.T) {
			port := uint16(8080)
			if zero {
				port = 8443
			}
			w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.squat, ZeroBacklog: zero, ReplyAndClose: true})
			for _, addr := range []netip.AddrPort{w.v4(port), w.v6(port)} {
				for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: addr, Timeout: 3 * time.Second}, 4) {
					testenv.Blocked(t, r)
				}
			}
		})
	}
}

// TestSquatterUDP: replies of a squatter on a reserved UDP port never
// arrive. It does see the first datagram of each flow (documented hole):
// its reply marks the flow SQUATTED and later datagrams are dropped.
func TestSquatterUDP(t *testing.T) {
	w := setup(t, webPolicy)
	sq := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.squat})
	for _, addr := range []netip.AddrPort{w.v4(5060), w.v6(5060)} {
		testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: addr, SourcePort: 40001}))
		testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: addr, SourcePort: 40001, Request: "second"}))
	}
	if got := string(sq.Received(t)); strings.Contains(got, "second") {
		t.Errorf("squatter received a second datagram of a flow it had answered: %q", got)
	}
}

// TestSquatterSourcePort: a squatter using a reserved port as the source
// port of an outgoing connection reaches nobody.
func TestSquatterSourcePort(t *testing.T) {
	w := setup(t, webPolicy)
	remote := w.Client.Serve(t, testenv.ServeConfig{Addr: any6(7000), As: w.worker})
	to := netip.AddrPortFrom(w.ClientV4, 7000)
	testenv.Blocked(t, w.Server.Dial(t, testenv.DialConfig{Addr: to, As: w.squat, SourcePort: 8080}))
	if got := remote.Received(t); len(got) != 0 {
		t.Errorf("remote server got %q from a squatter's reserved source port", got)
	}
	// The owner may use its port as a source port.
	testenv.Delivered(t, w.Server.Dial(t, testenv.DialConfig{Addr: to, As: w.owner, SourcePort: 8443}), remote.Reply)
}

// TestInvalidPolicyLeavesKernel: a bad policy exits 1 and the kernel's
// table is byte for byte what it was.
func TestInvalidPolicyLeavesKernel(t *testing.T) {
	w := setup(t, webPolicy)
	before := w.Server.Run(t, "nft", "list", "ruleset")
	for _, bad := range []string{
		"version: 1\nreservations:\n  - name: x\n    ports: [0]\n    owner: { users: [1] }\n",
		"version: 1\nreservations:\n  - name: x\n    ports: [80]\n    owner: { users: [no-such-user-pfw] }\n",
		"not: [yaml",
	} {
		_, errOut, code := portfw(t, w.Server, "apply", "-f", writePolicy(t, bad))
		if code != 1 || !strings.Contains(errOut, "policy.yaml:") {
			t.Errorf("apply of a bad policy: exit %d, stderr %q; want 1 and file:line:col errors", code, errOut)
		}
	}
	if after := w.Server.Run(t, "nft", "list", "ruleset"); after != before {
		t.Errorf("a rejected policy changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestApplyLifecycle: apply is idempotent, diff tells in sync from not,
// status reports, remove restores and leaves other tables alone.
func TestApplyLifecycle(t *testing.T) {
	w := setup(t, "")
	w.Server.Nft(t, "table inet other { chain c { type filter hook input priority 10; policy accept; tcp dport 22 accept; }; }")
	path := writePolicy(t, fmt.Sprintf(webPolicy, w.owner.UID))
	if _, _, code := portfw(t, w.Server, "diff", "-f", path); code != 1 {
		t.Errorf("diff before apply: exit %d, want 1", code)
	}
	out := mustPortfw(t, w.Server, "apply", "-f", path)
	if !strings.Contains(out, "+ web") || !strings.Contains(out, "+ sip") {
		t.Errorf("apply did not report the added reservations:\n%s", out)
	}
	listed := w.Server.Run(t, "nft", "list", "table", "inet", "portfw")
	if out := mustPortfw(t, w.Server, "apply", "-f", path); !strings.Contains(out, "nothing to do") {
		t.Errorf("second apply: %s", out)
	}
	if again := w.Server.Run(t, "nft", "list", "table", "inet", "portfw"); again != listed {
		t.Error("second apply changed the table")
	}
	if _, _, code := portfw(t, w.Server, "diff", "-f", path); code != 0 {
		t.Errorf("diff after apply: exit %d, want 0", code)
	}
	st := mustPortfw(t, w.Server, "status", "-f", path, "--json")
	for _, want := range []string{`"installed": true`, `"in_sync": true`, `"name": "web"`, `"dropped_packets": 0`} {
		if !strings.Contains(st, want) {
			t.Errorf("status --json lacks %s:\n%s", want, st)
		}
	}
	// Someone edits the table: diff notices.
	w.Server.Run(t, "nft", "add", "element", "inet", "portfw", "res_port", "{ tcp . 9999 }")
	if out, _, code := portfw(t, w.Server, "diff", "-f", path); code != 1 {
		t.Errorf("diff after an edit: exit %d, want 1\n%s", code, out)
	}
	mustPortfw(t, w.Server, "remove")
	rs := w.Server.Run(t, "nft", "list", "ruleset")
	if strings.Contains(rs, "table inet portfw") || !strings.Contains(rs, "table inet other") {
		t.Errorf("after remove:\n%s", rs)
	}
}
