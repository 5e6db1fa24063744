package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// webPolicy: web (8080, 8443 tcp) and sip (5060 udp) belong to the owner.
// The settings line is filled in by each test (%[4]s).
const webPolicy = `version: 1
settings: { %[4]s }
reservations:
  - name: web
    ports: [8080, 8443]
    protocols: [tcp]
    owner: { users: [%[1]d] }
  - name: sip
    ports: [5060]
    protocols: [udp]
    owner: { users: [%[1]d] }
  - name: lite
    ports: [5061]
    protocols: [udplite]
    owner: { users: [%[1]d] }
`

func (w *world) applyWith(t *testing.T, policyFmt, settings string, args ...string) string {
	t.Helper()
	path := writePolicy(t, fmt.Sprintf(policyFmt, w.owner.UID, w.squat.UID, w.worker.UID, settings))
	return mustPortfwVia(t, w.via, w.Server, append([]string{"apply", "-f", path}, args...)...)
}

// TestOwnerServed: the owner serves TCP, UDP and UDP-Lite, v4 and v6, to
// clients of any uid, with and without the guard.
func TestOwnerServed(t *testing.T) {
	layers(t, func(t *testing.T, guard bool, settings string) {
		w := setup(t, "")
		w.applyWith(t, webPolicy, settings)
		srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.owner})
		for _, addr := range []netip.AddrPort{w.v4(8080), w.v6(8080)} {
			testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: addr, As: w.squat}), srv.Reply)
		}
		for _, proto := range []testenv.Proto{testenv.UDP, testenv.UDPLite} {
			port := map[testenv.Proto]uint16{testenv.UDP: 5060, testenv.UDPLite: 5061}[proto]
			s := w.Server.Serve(t, testenv.ServeConfig{Proto: proto, Addr: any6(port), As: w.owner})
			for _, addr := range []netip.AddrPort{w.v4(port), w.v6(port)} {
				testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Proto: proto, Addr: addr}), s.Reply)
			}
		}
	})
}

func TestRootServedUnlessDisallowed(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.applyWith(t, webPolicy, "bind_guard: off")
	srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: testenv.Root})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}), srv.Reply)
	w.applyWith(t, webPolicy, "bind_guard: off, allow_root: false")
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}))
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8080)}))
	srv.Stop(t)
	// With the guard, root cannot even bind.
	w.applyWith(t, webPolicy, "bind_guard: on, allow_root: false")
	if got := w.Server.TryBind(t, testenv.TCP, any6(8080), testenv.Root); got != "EPERM" {
		t.Errorf("root's bind with allow_root: false and the guard: %s, want EPERM", got)
	}
}

// TestBindThenDrop: a listener made by root (nginx's master) or by the owner,
// whose connections a worker of another uid accepts and answers, is served:
// accept() gives the connection's socket the worker's credentials, and the
// connection is OWNED from the listener's SYN-ACK on.
func TestBindThenDrop(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.applyWith(t, webPolicy, "bind_guard: auto")
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

// TestSquatterTCP: a squatter on a reserved TCP port: the guard refuses its
// bind; the rules alone leave it no traffic.
func TestSquatterTCP(t *testing.T) {
	layers(t, func(t *testing.T, guard bool, settings string) {
		w := setup(t, "")
		w.applyWith(t, webPolicy, settings)
		if guard {
			for _, a := range []netip.AddrPort{any6(8080), any4(8080), w.v4(8080), w.v6(8080)} {
				if got := w.Server.TryBind(t, testenv.TCP, a, w.squat); got != "EPERM" {
					t.Errorf("squatter's bind of %s: %s, want EPERM", a, got)
				}
			}
			return
		}
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
	})
}

// TestSquatterSyncookies (the rules alone: with the guard a squatter cannot
// bind): SYN-ACKs sent as syncookies carry no socket. A squatter forces them
// with listen(fd, 0) and a delayed accept (whether the kernel then sends
// cookies depends on timing), and tcp_syncookies=2 makes every SYN-ACK a
// cookie, deterministically (the kernel's counter proves the path was
// taken). Several clients at once get nothing, and the squatter reads
// nothing. TestNaiveRuleLeaks shows the same squatter getting through a
// plain skuid rule.
func TestSquatterSyncookies(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.applyWith(t, webPolicy, "bind_guard: off")
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

// TestSquatterOrphan (the rules alone): a squatter that writes its reply
// and closes at once leaves the reply's retransmits and its FIN to an
// orphaned socket, which carries no owner. With a cookie handshake
// (tcp_syncookies=2) this leaks through a plain skuid rule
// (TestNaiveRuleLeaks); here nothing arrives.
func TestSquatterOrphan(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.applyWith(t, webPolicy, "bind_guard: off")
	for _, cookies := range []bool{false, true} {
		t.Run(fmt.Sprintf("syncookies=%t", cookies), func(t *testing.T) {
			port := uint16(8080)
			if cookies {
				port = 8443
				w.Server.Sysctl(t, "net.ipv4.tcp_syncookies", "2")
				t.Cleanup(func() { w.Server.Sysctl(t, "net.ipv4.tcp_syncookies", "1") })
			}
			w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.squat, ZeroBacklog: cookies, ReplyAndClose: true})
			for _, addr := range []netip.AddrPort{w.v4(port), w.v6(port)} {
				for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: addr, Timeout: 3 * time.Second}, 4) {
					testenv.Blocked(t, r)
				}
			}
		})
	}
}

// TestSquatterSourcePort: a squatter using a reserved port as the source
// port of an outgoing connection reaches nobody (the guard refuses the
// bind; the rules drop its packets); the owner may use its port.
func TestSquatterSourcePort(t *testing.T) {
	layers(t, func(t *testing.T, guard bool, settings string) {
		w := setup(t, "")
		w.applyWith(t, webPolicy, settings)
		remote := w.Client.Serve(t, testenv.ServeConfig{Addr: any6(7000), As: w.worker})
		to := netip.AddrPortFrom(w.ClientV4, 7000)
		r := w.Server.Dial(t, testenv.DialConfig{Addr: to, As: w.squat, SourcePort: 8080})
		testenv.Blocked(t, r)
		if guard && !strings.Contains(r.Err, "operation not permitted") {
			t.Errorf("with the guard the squatter's bind of its source port must fail: %v", r)
		}
		if got := remote.Received(t); len(got) != 0 {
			t.Errorf("remote server got %q from a squatter's reserved source port", got)
		}
		testenv.Delivered(t, w.Server.Dial(t, testenv.DialConfig{Addr: to, As: w.owner, SourcePort: 8443}), remote.Reply)
	})
}

// TestInvalidPolicyLeavesKernel: a bad policy exits 1 and the kernel's
// table is byte for byte what it was.
func TestInvalidPolicyLeavesKernel(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.applyWith(t, webPolicy, "bind_guard: off")
	before := w.Server.Run(t, "nft", "list", "ruleset")
	for _, bad := range []string{
		"version: 1\nreservations:\n  - name: x\n    ports: [0]\n    owner: { users: [1] }\n",
		"version: 1\nreservations:\n  - name: x\n    ports: [80]\n    owner: { users: [no-such-user-pfw] }\n",
		"not: [yaml",
		"version: 1\nreservations:\n  - name: all\n    ports: [\"30000-65535\"]\n    owner: { users: [1] }\n",
	} {
		_, errOut, code := portfw(t, w.Server, "apply", "-f", writePolicy(t, bad))
		if code != 1 || !strings.Contains(errOut, "policy.yaml") {
			t.Errorf("apply of a bad policy: exit %d, stderr %q; want 1 and the file named", code, errOut)
		}
	}
	if after := w.Server.Run(t, "nft", "list", "ruleset"); after != before {
		t.Errorf("a rejected policy changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestApplyLifecycle: apply is idempotent, diff tells in sync from not,
// status reports, remove restores and leaves other tables alone.
func TestApplyLifecycle(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.Server.Nft(t, "table inet other { chain c { type filter hook input priority 10; policy accept; tcp dport 22 accept; }; }")
	path := writePolicy(t, fmt.Sprintf(webPolicy, w.owner.UID, 0, 0, "bind_guard: auto"))
	if _, _, code := portfw(t, w.Server, "diff", "-f", path); code != 1 {
		t.Errorf("diff before apply: exit %d, want 1", code)
	}
	out := mustPortfw(t, w.Server, "apply", "-f", path)
	if !strings.Contains(out, "+ web") || !strings.Contains(out, "+ sip") || !strings.Contains(out, "layers: bind guard on") {
		t.Errorf("apply did not report the added reservations and the layers:\n%s", out)
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
	for _, want := range []string{`"installed": true`, `"in_sync": true`, `"name": "web"`, `"dropped_packets": 0`, `"active": true`} {
		if !strings.Contains(st, want) {
			t.Errorf("status --json lacks %s:\n%s", want, st)
		}
	}
	// Someone edits the table: diff notices.
	w.Server.Run(t, "nft", "add", "element", "inet", "portfw", "res_port", "{ tcp . 9999 }")
	if out, _, code := portfw(t, w.Server, "diff", "-f", path); code != 1 {
		t.Errorf("diff after an edit: exit %d, want 1\n%s", code, out)
	}
	if st := mustPortfw(t, w.Server, "status"); !strings.Contains(st, "layers: bind guard on, nftables rules on") {
		t.Errorf("status does not say both layers are in force:\n%s", st)
	}
	mustPortfw(t, w.Server, "remove")
	if st := mustPortfw(t, w.Server, "status"); !strings.Contains(st, "layers: bind guard OFF, nftables rules OFF") {
		t.Errorf("status after remove does not say both layers are gone:\n%s", st)
	}
	rs := w.Server.Run(t, "nft", "list", "ruleset")
	if strings.Contains(rs, "table inet portfw") || !strings.Contains(rs, "table inet other") {
		t.Errorf("after remove:\n%s", rs)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "ok" {
		t.Errorf("after remove a squatter's bind: %s, want ok (the guard went too)", got)
	}
}
