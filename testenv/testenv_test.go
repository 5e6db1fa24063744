package testenv_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

func TestDelivered(t *testing.T) {
	t.Parallel()
	owner := testenv.User(t, "pfw-owner")
	other := testenv.User(t, "pfw-other")
	p := testenv.NewPair(t)

	tests := []struct {
		name   string
		proto  testenv.Proto
		listen netip.Addr
		dial   netip.Addr
	}{
		{"tcp4", testenv.TCP, p.ServerV4, p.ServerV4},
		{"tcp6", testenv.TCP, p.ServerV6, p.ServerV6},
		{"tcp dual-stack via v4", testenv.TCP, netip.IPv6Unspecified(), p.ServerV4},
		{"tcp dual-stack via v6", testenv.TCP, netip.IPv6Unspecified(), p.ServerV6},
		{"udp4", testenv.UDP, p.ServerV4, p.ServerV4},
		{"udp6", testenv.UDP, p.ServerV6, p.ServerV6},
		{"udp dual-stack via v4", testenv.UDP, netip.IPv6Unspecified(), p.ServerV4},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := uint16(8000 + i)
			srv := p.Server.Serve(t, testenv.ServeConfig{
				Proto: tt.proto,
				Addr:  netip.AddrPortFrom(tt.listen, port),
				As:    owner,
			})
			if !srv.Cred.Is(owner) {
				t.Errorf("server runs as %+v, want %v and no groups", srv.Cred, owner)
			}
			req := "request from " + tt.name
			r := p.Client.Dial(t, testenv.DialConfig{
				Proto:   tt.proto,
				Addr:    netip.AddrPortFrom(tt.dial, port),
				As:      other,
				Request: req,
			})
			testenv.Delivered(t, r, fmt.Sprintf("hello from %d", owner.UID))
			if !r.Cred.Is(other) {
				t.Errorf("client runs as %+v, want %v and no groups", r.Cred, other)
			}
			if got := string(srv.Received(t)); got != req {
				t.Errorf("server read %q, want %q", got, req)
			}
		})
	}
}

// TestBindThenDrop checks that the process serves as the worker while the
// listening socket keeps the credentials of whoever created it, which is
// what netfilter's meta skuid will see.
func TestBindThenDrop(t *testing.T) {
	t.Parallel()
	owner := testenv.User(t, "pfw-owner")
	worker := testenv.User(t, "pfw-worker")
	other := testenv.User(t, "pfw-other")
	p := testenv.NewPair(t)

	for _, tt := range []struct {
		name     string
		listenAs testenv.Cred
	}{{"root", testenv.Root}, {"owner", owner}} {
		t.Run(tt.name, func(t *testing.T) {
			listenAs := tt.listenAs
			srv := p.Server.Serve(t, testenv.ServeConfig{
				Addr:     netip.AddrPortFrom(netip.IPv6Unspecified(), 8080),
				As:       worker,
				ListenAs: &listenAs,
			})
			if !srv.Cred.Is(worker) {
				t.Errorf("server runs as %+v, want %v and no groups", srv.Cred, worker)
			}
			// ss prints a socket's uid only when it is not 0.
			ss := p.Server.Run(t, "ss", "-Htlne", "sport = :8080")
			hasUID := strings.Contains(ss, fmt.Sprintf(" uid:%d ", listenAs.UID))
			if listenAs.UID != 0 && !hasUID || listenAs.UID == 0 && strings.Contains(ss, " uid:") {
				t.Errorf("listener should belong to uid %d, ss says: %s", listenAs.UID, ss)
			}
			r := p.Client.Dial(t, testenv.DialConfig{Addr: netip.AddrPortFrom(p.ServerV4, 8080), As: other})
			testenv.Delivered(t, r, fmt.Sprintf("hello from %d", worker.UID))
		})
	}
}

func TestBlockedDetected(t *testing.T) {
	t.Parallel()
	squat := testenv.User(t, "pfw-squat")
	other := testenv.User(t, "pfw-other")
	p := testenv.NewPair(t)
	p.Server.Nft(t, `table inet t {
	chain o {
		type filter hook output priority 0;
		tcp sport 8080 drop
		udp sport 8080 drop
	}
}`)
	addr := netip.AddrPortFrom(netip.IPv6Unspecified(), 8080)
	tcp := p.Server.Serve(t, testenv.ServeConfig{Addr: addr, As: squat})
	udp := p.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: addr, As: squat})
	// A port the rule leaves alone, to show the blocks come from the rule.
	open := p.Server.Serve(t, testenv.ServeConfig{Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), 8081), As: squat})

	// Subtests in parallel: a blocked exchange always waits for its timeout.
	t.Run("clients", func(t *testing.T) {
		for _, dst := range []netip.Addr{p.ServerV4, p.ServerV6} {
			t.Run("tcp "+dst.String(), func(t *testing.T) {
				t.Parallel()
				r := p.Client.Dial(t, testenv.DialConfig{Addr: netip.AddrPortFrom(dst, 8080), As: other})
				testenv.Blocked(t, r)
				if r.Connected {
					t.Errorf("TCP connected although every SYN-ACK is dropped: %v", r)
				}
			})
			t.Run("udp "+dst.String(), func(t *testing.T) {
				t.Parallel()
				testenv.Blocked(t, p.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: netip.AddrPortFrom(dst, 8080), As: other}))
			})
			t.Run("unfiltered "+dst.String(), func(t *testing.T) {
				t.Parallel()
				testenv.Delivered(t, p.Client.Dial(t, testenv.DialConfig{Addr: netip.AddrPortFrom(dst, 8081), As: other}), open.Reply)
			})
		}
	})
	if got := tcp.Received(t); len(got) != 0 {
		t.Errorf("TCP squatter read %q, want nothing", got)
	}
	// Input is not filtered, so the UDP squatter does get the datagrams:
	// the hole portfw's bind guard closes.
	if got := udp.Received(t); len(got) == 0 {
		t.Errorf("UDP server read nothing; the rule only drops its replies")
	}
}

func TestCleanupRemovesNamespaces(t *testing.T) {
	t.Parallel()
	var names []string
	t.Run("pair", func(t *testing.T) {
		p := testenv.NewPair(t)
		names = []string{p.Server.Name, p.Client.Name}
		p.Server.Serve(t, testenv.ServeConfig{Addr: netip.AddrPortFrom(p.ServerV4, 8080)})
		if list := netnsList(t); !slices.Contains(list, names[0]) || !slices.Contains(list, names[1]) {
			t.Fatalf("ip netns list = %q, want %q in it", list, names)
		}
	})
	list := netnsList(t)
	for _, n := range names {
		if slices.Contains(list, n) {
			t.Errorf("namespace %s still exists after cleanup", n)
		}
	}
}

func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("list namespaces: %v", err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func TestSourcePort(t *testing.T) {
	t.Parallel()
	squat := testenv.User(t, "pfw-squat")
	owner := testenv.User(t, "pfw-owner")
	p := testenv.NewPair(t)
	srv := p.Server.Serve(t, testenv.ServeConfig{Addr: netip.AddrPortFrom(p.ServerV6, 9000), As: owner})
	r := p.Client.Dial(t, testenv.DialConfig{Addr: srv.Addr, As: squat, SourcePort: 8080})
	testenv.Delivered(t, r, srv.Reply)
	conns := srv.Conns(t)
	if len(conns) != 1 || conns[0].Remote != "[2001:db8::2]:8080" {
		t.Errorf("server saw %+v, want one connection from [2001:db8::2]:8080", conns)
	}
}

// TestSyncookies exercises the primitives of a squatter on the syncookie
// path.
func TestSyncookies(t *testing.T) {
	t.Parallel()
	squat := testenv.User(t, "pfw-squat")
	other := testenv.User(t, "pfw-other")

	// tcp_syncookies=2 answers every SYN with a cookie: the deterministic
	// way to put every handshake on the unattributed path.
	t.Run("forced", func(t *testing.T) {
		t.Parallel()
		p := testenv.NewPair(t)
		p.Server.Sysctl(t, "net.ipv4.tcp_syncookies", "2")
		srv := p.Server.Serve(t, testenv.ServeConfig{
			Addr:        netip.AddrPortFrom(netip.IPv6Unspecified(), 8080),
			As:          squat,
			AcceptDelay: 300 * time.Millisecond,
		})
		const n = 4
		for _, dst := range []netip.Addr{p.ServerV4, p.ServerV6} {
			for _, r := range p.Client.DialN(t, testenv.DialConfig{Addr: netip.AddrPortFrom(dst, 8080), As: other}, n) {
				testenv.Delivered(t, r, srv.Reply)
			}
		}
		if got := p.Server.Counter(t, "TcpExtSyncookiesSent"); got < 2*n {
			t.Errorf("%d syncookies sent, want at least %d", got, 2*n)
		}
		if got := len(srv.Conns(t)); got != 2*n {
			t.Errorf("squatter accepted %d connections, want %d", got, 2*n)
		}
	})

	// Backlog 0 is what a squatter can do without root. On this kernel the
	// SYN queue counts as full only while one handshake is pending, and a
	// full accept queue drops SYNs outright, so which clients get cookies,
	// get dropped and retried, or get reset (a FIN hitting the listener
	// fails the cookie check) depends on timing. Only the first handshake
	// is certain to be served.
	t.Run("zero backlog", func(t *testing.T) {
		t.Parallel()
		p := testenv.NewPair(t)
		srv := p.Server.Serve(t, testenv.ServeConfig{
			Addr:        netip.AddrPortFrom(p.ServerV4, 8080),
			As:          squat,
			ZeroBacklog: true,
			AcceptDelay: 500 * time.Millisecond,
		})
		rs := p.Client.DialN(t, testenv.DialConfig{Addr: srv.Addr, As: other, Timeout: 3 * time.Second}, 4)
		served := 0
		for _, r := range rs {
			if string(r.Received) == srv.Reply {
				served++
			}
		}
		if served == 0 {
			t.Errorf("no client served: %v", rs)
		}
		if got := srv.Received(t); !strings.Contains(string(got), "hello") {
			t.Errorf("squatter read %q, want at least one request", got)
		}
		t.Logf("served %d of %d; syncookies sent: %d, listen overflows: %d", served, len(rs),
			p.Server.Counter(t, "TcpExtSyncookiesSent"), p.Server.Counter(t, "TcpExtListenOverflows"))
	})
}

func TestReplyAndClose(t *testing.T) {
	t.Parallel()
	squat := testenv.User(t, "pfw-squat")
	p := testenv.NewPair(t)
	srv := p.Server.Serve(t, testenv.ServeConfig{Addr: netip.AddrPortFrom(p.ServerV4, 8080), As: squat, ReplyAndClose: true})
	r := p.Client.Dial(t, testenv.DialConfig{Addr: srv.Addr, As: squat})
	if !strings.HasPrefix(string(r.Received), srv.Reply) {
		t.Errorf("want the reply %q, got %v", srv.Reply, r)
	}
}

func TestFd(t *testing.T) {
	t.Parallel()
	n := testenv.NewNS(t)
	var byFd, byPath syscall.Stat_t
	if err := syscall.Fstat(n.Fd(t), &byFd); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(n.Path, &byPath); err != nil {
		t.Fatal(err)
	}
	if byFd.Ino != byPath.Ino || byFd.Dev != byPath.Dev {
		t.Errorf("Fd is not the namespace at %s", n.Path)
	}
}
