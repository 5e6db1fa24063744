package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/testenv"
)

// The attacks of DESIGN.md on UDP, UDP-Lite, TCP Fast Open and opened low
// ports, each against both layers (the bind guard, and the nftables rules
// alone) and with portfw entered both ways (ip netns exec, nsenter). The
// controls at the end run the same attacks against a ruleset without the
// rule that closes them, and must see the leak: otherwise these tests would
// prove nothing.

// sipPolicy: 5060 belongs to the owner on UDP and UDP-Lite; 8080 and 8443
// on TCP, for the Fast Open attacks.
const sipPolicy = `version: 1
settings: { %[4]s }
reservations:
  - name: sip
    ports: [5060]
    protocols: [udp, udplite]
    owner: { users: [%[1]d] }
  - name: web
    ports: [8080, 8443]
    protocols: [tcp]
    owner: { users: [%[1]d] }
`

// attack runs f for each way of entering the namespace and each layer.
func attack(t *testing.T, f func(t *testing.T, w *world, guard bool)) {
	for _, v := range vias {
		t.Run(string(v), func(t *testing.T) {
			t.Parallel()
			layers(t, func(t *testing.T, guard bool, settings string) {
				w := setupVia(t, v, "")
				w.applyWith(t, sipPolicy, settings)
				f(t, w, guard)
			})
		})
	}
}

// wantEPERM checks the guard refuses each bind.
func wantEPERM(t *testing.T, w *world, proto testenv.Proto, as testenv.Cred, addrs ...netip.AddrPort) {
	t.Helper()
	for _, a := range addrs {
		if got := w.Server.TryBind(t, proto, a, as); got != "EPERM" {
			t.Errorf("%s bind of %s as uid %d: %s, want EPERM", proto, a, as.UID, got)
		}
	}
}

func udpFlow(addr netip.AddrPort, sport uint16, req string) testenv.DialConfig {
	return testenv.DialConfig{Proto: testenv.UDP, Addr: addr, SourcePort: sport, Request: req}
}

func reads(t *testing.T, s *testenv.Server) []string {
	t.Helper()
	var out []string
	for _, c := range s.Conns(t) {
		out = append(out, string(c.Data))
	}
	return out
}

// TestUDPCoBind: the owner's UDP server sets SO_REUSEADDR (most do); a
// squatter sets it too and binds the owner's port on the specific address,
// which the kernel prefers for the owner's established flow. With the
// guard its bind fails; with the rules alone its replies never leave, its
// first reply marks the flow SQUATTED, and it reads at most the one
// datagram before that (the residual docs/layers.md states).
func TestUDPCoBind(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		owner := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.owner})
		testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40001, "register")), owner.Reply)
		if guard {
			wantEPERM(t, w, testenv.UDP, w.squat, w.v4(5060), w.v6(5060), any4(5060), any6(5060))
			testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40001, "invite")), owner.Reply)
			return
		}
		sq := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: w.v4(5060), As: w.squat, Reply: "squatted"})
		for _, req := range []string{"invite", "bye", "again"} {
			testenv.Blocked(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40001, req)))
		}
		if got := reads(t, sq); len(got) > 1 {
			t.Errorf("the co-bound squatter read %q: more than the one datagram before its reply gave it away", got)
		}
		// The owner still serves flows the squatter's socket does not match.
		testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v6(5060), 40002, "v6")), owner.Reply)
	})
}

// TestUDPStaleFlow: the owner served a client and stopped; a squatter binds
// the port; the same client sends again within the conntrack timeout, on a
// flow conntrack still marks OWNED. The squatter gets no reply out, and its
// first reply re-marks the flow.
func TestUDPStaleFlow(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		owner := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.owner})
		testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40011, "register")), owner.Reply)
		testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v6(5060), 40011, "register")), owner.Reply)
		owner.Stop(t)
		if guard {
			wantEPERM(t, w, testenv.UDP, w.squat, any6(5060), any4(5060))
			return
		}
		sq := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.squat, Reply: "squatted"})
		for _, a := range []netip.AddrPort{w.v4(5060), w.v6(5060)} {
			for _, req := range []string{"invite", "bye"} {
				testenv.Blocked(t, w.Client.Dial(t, udpFlow(a, 40011, req+"-"+a.Addr().String())))
			}
		}
		got := strings.Join(reads(t, sq), " ")
		if strings.Contains(got, "bye") {
			t.Errorf("the squatter read %q: a datagram after its first reply was delivered", got)
		}
	})
}

// TestUDPConnectedSquatter: a squatter co-binds the owner's port and
// connects its socket to the owner's client, so the kernel hands that
// client's datagrams to it before any unconnected socket: early demux ties
// them to the squatter's socket, and the rules drop them on input.
func TestUDPConnectedSquatter(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		owner := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.owner})
		client := netip.AddrPortFrom(w.ClientV4, 40021)
		testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v4(5060), client.Port(), "register")), owner.Reply)
		if guard {
			wantEPERM(t, w, testenv.UDP, w.squat, w.v4(5060))
			return
		}
		sq := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: w.v4(5060), As: w.squat, Connect: client, Reply: "squatted"})
		for _, req := range []string{"invite", "bye"} {
			testenv.Blocked(t, w.Client.Dial(t, udpFlow(w.v4(5060), client.Port(), req)))
		}
		if got := reads(t, sq); len(got) != 0 {
			t.Errorf("the connected squatter read %q", got)
		}
	})
}

// TestUDPSilentSquatter: a squatter that never replies. With the guard it
// cannot bind. With the rules alone no rule can tie an unconnected UDP
// socket to an incoming datagram, so it reads every datagram of every flow
// (the residual docs/layers.md states) and no counter moves; the audit and
// apply report it.
func TestUDPSilentSquatter(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		if guard {
			wantEPERM(t, w, testenv.UDP, w.squat, any6(5060), any4(5060), w.v4(5060))
			wantEPERM(t, w, testenv.UDPLite, w.squat, any6(5060), any4(5060))
			return
		}
		sq := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.squat, Silent: true})
		for i := range 3 {
			testenv.Blocked(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40031, fmt.Sprint("secret-", i))))
		}
		if got := reads(t, sq); len(got) != 3 {
			t.Errorf("the silent squatter read %q; the documented residual is that it reads all three", got)
		}
		out, _, code := portfwVia(t, w.via, w.Server, "audit", "-f", writePolicy(t, fmt.Sprintf(sipPolicy, w.owner.UID, 0, 0, "bind_guard: off")))
		if code != 1 || !strings.Contains(out, "SQUATTER") || !strings.Contains(out, fmt.Sprint(w.squat.UID)) {
			t.Errorf("audit of a silent squatter: exit %d\n%s", code, out)
		}
		out = w.applyWith(t, sipPolicy, "bind_guard: off")
		if !strings.Contains(out, "SQUATTER: udp [::]:5060 uid "+fmt.Sprint(w.squat.UID)) {
			t.Errorf("apply does not report the squatter:\n%s", out)
		}
	})
}

// TestUDPLite: UDP-Lite has ports like UDP, but portfw keeps no flow marks
// for it: the rules drop every reply of a squatter, and only the guard
// keeps it from reading. Without the guard it reads every datagram, the
// residual docs/layers.md states.
func TestUDPLite(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		if guard {
			wantEPERM(t, w, testenv.UDPLite, w.squat, any6(5060), any4(5060), w.v6(5060))
			owner := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDPLite, Addr: any6(5060), As: w.owner})
			for _, a := range []netip.AddrPort{w.v4(5060), w.v6(5060)} {
				testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDPLite, Addr: a}), owner.Reply)
			}
			return
		}
		sq := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDPLite, Addr: any6(5060), As: w.squat, Reply: "squatted"})
		for _, a := range []netip.AddrPort{w.v4(5060), w.v6(5060)} {
			for _, req := range []string{"first", "second"} {
				testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDPLite, Addr: a, SourcePort: 40051, Request: req}))
			}
		}
		if got := reads(t, sq); len(got) != 4 {
			t.Errorf("the UDP-Lite squatter read %q; the documented residual is every datagram (4)", got)
		}
	})
}

// fastOpen turns TCP Fast Open on for servers in the server namespace and
// for clients in the client namespace, and returns a counter of the SYNs
// with data the client sends to port: the proof that a test exercises Fast
// Open. (The kernel's counters only count SYN data that got an answer.)
func fastOpen(t *testing.T, w *world, port uint16) func() int {
	t.Helper()
	w.Server.Sysctl(t, "net.ipv4.tcp_fastopen", "3")
	w.Client.Sysctl(t, "net.ipv4.tcp_fastopen", "1")
	var probe strings.Builder
	fmt.Fprintf(&probe, "table inet synprobe {\n\tchain out { type filter hook output priority 0; policy accept; tcp dport %d tcp flags syn / fin,syn,rst,ack jump data; }\n\tchain data {\n", port)
	for doff := 5; doff <= 15; doff++ {
		fmt.Fprintf(&probe, "\t\ttcp doff %d ip length %d return\n\t\ttcp doff %d ip6 length %d return\n", doff, 20+4*doff, doff, 4*doff)
	}
	probe.WriteString("\t\tcounter\n\t}\n}\n")
	w.Client.Nft(t, probe.String())
	return func() int {
		out := w.Client.Run(t, "nft", "list", "chain", "inet", "synprobe", "data")
		var n int
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 5 && f[0] == "counter" && f[1] == "packets" {
				fmt.Sscan(f[2], &n)
			}
		}
		return n
	}
}

// TestFastOpen: with TFO on for servers, a squatter's listener with
// TCP_FASTOPEN would read the data in a client's SYN before its SYN-ACK
// could be dropped: with a cookie the client cached from the real owner
// (the cookie key is the namespace's, not the socket's), or with none
// (TCP_FASTOPEN_NO_COOKIE). The rules drop SYNs that carry data to reserved
// ports; the client sends the SYN again without data, and the owner is
// served.
func TestFastOpen(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		tried := fastOpen(t, w, 8443)
		owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.owner, FastOpen: true})
		// The first Fast Open connection asks for a cookie (no data yet).
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443), FastOpen: true}), owner.Reply)
		before := tried()
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443), FastOpen: true, Timeout: 5 * time.Second}), owner.Reply)
		if tried() == before {
			t.Fatal("the client did not put data in its SYN with the owner's cookie; the test does not exercise Fast Open")
		}
		owner.Stop(t)
		if guard {
			wantEPERM(t, w, testenv.TCP, w.squat, any6(8443), any4(8443))
			return
		}
		for _, noCookie := range []bool{false, true} {
			t.Run(fmt.Sprintf("no-cookie=%t", noCookie), func(t *testing.T) {
				sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat, FastOpen: true, FastOpenNoCookie: noCookie})
				before := tried()
				for _, a := range []netip.AddrPort{w.v4(8443), w.v6(8443)} {
					testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: a, FastOpen: true, FastOpenNoCookie: noCookie,
						Request: "secret", Timeout: 3 * time.Second}))
				}
				if got := sq.Received(t); len(got) != 0 {
					t.Errorf("the Fast Open squatter read %q", got)
				}
				if tried() < before+1 {
					t.Error("no SYN carried data; the test did not exercise Fast Open")
				}
				sq.Stop(t)
			})
		}
	})
}

// lowPolicy: 80/tcp belongs to the owner; the threshold setting and the
// guard come from the test (%[4]s).
const lowPolicy = `version: 1
settings: { %[4]s }
reservations:
  - name: web
    ports: [80]
    protocols: [tcp]
    owner: { users: [%[1]d] }
`

// TestOpenedLowPorts: the default (auto) never lowers the threshold, guard
// or not, so no low port opens to anyone; the guard lets the owner bind 80
// anyway. A threshold set by number opens the range: the guard keeps every
// other low port root-only on every protocol; without it the rules drop
// replies on them, and apply says that UDP ones can be read.
func TestOpenedLowPorts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, settings string
		threshold      string
		owner80        string
		udp514         string // a squatter's bind of udp/514
		lite515        string
		tcp81          string
		warn           string // on apply's stderr
	}{
		{"auto with the guard", "bind_guard: auto", "1024", "ok", "EACCES", "EACCES", "EACCES", ""},
		{"auto without the guard", "bind_guard: off", "1024", "EACCES", "EACCES", "EACCES", "EACCES", ""},
		{"80 with the guard", "bind_guard: auto, unprivileged_port_start: 80", "80", "ok", "EPERM", "EPERM", "EPERM", ""},
		{"80 without the guard", "bind_guard: off, unprivileged_port_start: 80", "80", "ok", "ok", "ok", "ok", "reads every datagram"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := setup(t, "")
			path := writePolicy(t, fmt.Sprintf(lowPolicy, w.owner.UID, 0, 0, tc.settings))
			out, errOut, code := portfw(t, w.Server, "apply", "-f", path)
			if code != 0 {
				t.Fatalf("apply: %d\n%s%s", code, out, errOut)
			}
			if tc.warn != "" && !strings.Contains(errOut, tc.warn) {
				t.Errorf("apply's warnings lack %q:\n%s", tc.warn, errOut)
			}
			if got := sysctlIn(t, w.Server, "net.ipv4.ip_unprivileged_port_start"); got != tc.threshold {
				t.Errorf("threshold %s, want %s", got, tc.threshold)
			}
			for _, b := range []struct {
				proto testenv.Proto
				port  uint16
				as    testenv.Cred
				want  string
			}{{testenv.TCP, 80, w.owner, tc.owner80}, {testenv.UDP, 514, w.squat, tc.udp514},
				{testenv.UDPLite, 515, w.squat, tc.lite515}, {testenv.TCP, 81, w.squat, tc.tcp81}, {testenv.UDP, 514, testenv.Root, "ok"}} {
				if got := w.Server.TryBind(t, b.proto, any6(b.port), b.as); got != b.want {
					t.Errorf("%s/%d as uid %d: %s, want %s", b.proto, b.port, b.as.UID, got, b.want)
				}
			}
			if tc.udp514 != "ok" {
				return
			}
			// Opened without the guard: the squatter's replies never leave.
			for _, p := range []testenv.Proto{testenv.UDP, testenv.UDPLite} {
				port := map[testenv.Proto]uint16{testenv.UDP: 514, testenv.UDPLite: 515}[p]
				w.Server.Serve(t, testenv.ServeConfig{Proto: p, Addr: any6(port), As: w.squat, Reply: "squatted"})
				testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: p, Addr: w.v4(port)}))
			}
		})
	}
}

// reopened plays the reopened-connection attack: the owner served a client
// on a fixed source port and aborted the connection with an RST (conntrack
// keeps the entry, in CLOSE, with its OWNED mark), a squatter bound the
// port after the owner stopped, and the client connects again from the
// same port within conntrack's 10 s: the kernel reopens the old entry for
// the new SYN. It returns the squatter and the client's result.
func reopened(t *testing.T, w *world, addr netip.AddrPort, sport uint16) (*testenv.Server, testenv.Result) {
	t.Helper()
	owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(addr.Port()), As: w.owner, Reset: true})
	// The client keeps its side open (no FIN: conntrack would then make
	// a new entry for the next SYN); the owner's RST ends the connection.
	first := w.Client.Dial(t, testenv.DialConfig{Addr: addr, SourcePort: sport, Request: "first", Hold: true})
	if string(first.Received) != owner.Reply {
		t.Fatalf("the owner's first connection: %v", first)
	}
	owner.Stop(t)
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(addr.Port()), As: w.squat, Reply: "squatted"})
	return sq, w.Client.Dial(t, testenv.DialConfig{Addr: addr, SourcePort: sport, Request: "password", Hold: true})
}

// TestReopenedConnection: the new connection inherits nothing from the
// aborted one: with the guard the squatter cannot bind; with the rules
// alone a SYN is unmarked, so its SYN-ACK is judged by its own uid.
func TestReopenedConnection(t *testing.T) {
	attack(t, func(t *testing.T, w *world, guard bool) {
		if guard {
			wantEPERM(t, w, testenv.TCP, w.squat, any6(8080), any4(8080))
			return
		}
		for i, a := range []netip.AddrPort{w.v4(8080), w.v6(8080)} {
			sq, r := reopened(t, w, a, uint16(45001+i))
			testenv.Blocked(t, r)
			if got := sq.Received(t); len(got) != 0 {
				t.Errorf("%s: the squatter read %q on the reopened connection", a, got)
			}
			sq.Stop(t)
		}
	})
}

// --- controls ---------------------------------------------------------------

// TestControlReopened: without the rule that unmarks a SYN, the squatter
// reads the client's data on the reopened connection and answers it.
func TestControlReopened(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	controlRuleset(t, w, sipPolicy, func(s string) string {
		return strings.ReplaceAll(s, "\t\ttcp flags syn / fin,syn,rst,ack ct mark set ct mark & 0xfcffffff\n", "")
	})
	sq, r := reopened(t, w, w.v4(8080), 45011)
	if got := string(sq.Received(t)); !strings.Contains(got, "password") || string(r.Received) != "squatted" {
		t.Errorf("control: the squatter read %q and the client got %v; the reopened-connection test would prove nothing", got, r)
	}
}

// controlRuleset is portfw's compiled ruleset for the policy with one
// line changed by edit, loaded with nft -f: what the rules would be without
// the rule a test is about.
func controlRuleset(t *testing.T, w *world, policyFmt string, edit func(string) string) {
	t.Helper()
	path := writePolicy(t, fmt.Sprintf(policyFmt, w.owner.UID, 0, 0, "bind_guard: off"))
	text := mustPortfw(t, w.Server, "compile", "-f", path)
	changed := edit(text)
	if changed == text {
		t.Fatal("the control's edit changed nothing in the ruleset")
	}
	w.Server.Nft(t, changed)
}

// TestControlUDPOwnedFirst: with UDP's OWNED flows accepted before the
// squatter check (the TCP order, as portfw once had it), the co-bound
// squatter answers the owner's client: the co-bind test sees leaks.
func TestControlUDPOwnedFirst(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	controlRuleset(t, w, sipPolicy, func(s string) string {
		return strings.Replace(s, "\t\tmeta l4proto tcp ct mark & 0x01000000 == 0x01000000 accept\n", "\t\tct mark & 0x01000000 == 0x01000000 accept\n", 1)
	})
	owner := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40041, "register")), owner.Reply)
	w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: w.v4(5060), As: w.squat, Reply: "squatted"})
	r := w.Client.Dial(t, udpFlow(w.v4(5060), 40041, "invite"))
	if string(r.Received) != "squatted" {
		t.Errorf("control: the co-bound squatter's reply did not get through (%v); the co-bind test would prove nothing", r)
	}
}

// TestControlFastOpen: without the SYN-with-data rule, a squatter's Fast
// Open listener reads the data of a client's SYN: the Fast Open test sees
// leaks, and the kernel's counter shows the path.
func TestControlFastOpen(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	tried := fastOpen(t, w, 8443)
	controlRuleset(t, w, sipPolicy, func(s string) string {
		return strings.Replace(s, "\t\ttcp flags syn / fin,syn,rst,ack jump in_syn\n", "", 1)
	})
	passive := w.Server.Counter(t, "TcpExtTCPFastOpenPassive")
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat, FastOpen: true, FastOpenNoCookie: true})
	w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443), FastOpen: true, FastOpenNoCookie: true, Request: "secret", Timeout: 2 * time.Second})
	if got := string(sq.Received(t)); !strings.Contains(got, "secret") {
		t.Errorf("control: the Fast Open squatter read %q; the Fast Open test would prove nothing", got)
	}
	if w.Server.Counter(t, "TcpExtTCPFastOpenPassive") == passive || tried() == 0 {
		t.Errorf("control: the server took no Fast Open connection (%d SYNs with data sent)", tried())
	}
}

// fillCounts fills the count sets of the input and output drop chains to
// their size with keys of other ports (sctp . 0 and 1 stand in for the
// test's two), so the keys of the test's drops cannot be added.
func fillCounts(t *testing.T, w *world) {
	t.Helper()
	var b strings.Builder
	for _, set := range []string{"cnt_in", "cnt_out"} {
		fmt.Fprintf(&b, "add element inet portfw %s { sctp . 0, sctp . 1", set)
		for _, proto := range []string{"tcp", "udp"} {
			for port := range 65536 {
				if (proto == "tcp" && port == 8080) || (proto == "udp" && port == 5060) {
					continue
				}
				fmt.Fprintf(&b, ", %s . %d", proto, port)
			}
		}
		b.WriteString(" }\n")
	}
	path := filepath.Join(t.TempDir(), "fill.nft")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	w.Server.Run(t, "nft", "-f", path)
	if _, _, err := w.Server.Exec("nft", "add", "element", "inet", "portfw", "cnt_in", "{ sctp . 2 }"); err == nil {
		t.Fatalf("the count set took one more key than its size (%d): the test would not try a full set", compiler.CountSize)
	}
}

// TestCountSetFull: a squatter (or anyone) can fill the count sets with
// the keys of its own dropped packets; then new keys are not counted, and
// their packets are dropped all the same by the drop chains' last rule:
// the squatter's TCP listener gets nothing, its UDP server's replies do
// not leave, and nothing is counted for them. With the rules alone (the guard refuses the
// binds before any of this).
func TestCountSetFull(t *testing.T) {
	for _, v := range vias {
		t.Run(string(v), func(t *testing.T) {
			t.Parallel()
			w := setupVia(t, v, "")
			w.applyWith(t, sipPolicy, "bind_guard: off")
			fillCounts(t, w)
			tcp := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.squat})
			// A UDP squatter reads datagrams with the rules alone (the
			// residual of TestUDPSilentSquatter); its replies are dropped.
			w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.squat})
			testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}))
			testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8080)}))
			testenv.Blocked(t, w.Client.Dial(t, udpFlow(w.v4(5060), 40051, "register")))
			testenv.Blocked(t, w.Client.Dial(t, udpFlow(w.v6(5060), 40052, "register")))
			if got := tcp.Conns(t); len(got) != 0 {
				t.Errorf("the squatter's TCP listener accepted %d connections", len(got))
			}
			for _, set := range []string{"cnt_in", "cnt_out"} {
				if out := w.Server.Run(t, "nft", "list", "set", "inet", "portfw", set); strings.Contains(out, "tcp . 8080 ") || strings.Contains(out, "udp . 5060 ") {
					t.Errorf("%s counted a key past its size", set)
				}
			}
		})
	}
}

// TestControlCountSetFull: without the drop chains' last rules, a full
// count set lets the squatter's traffic through: the test above would see
// the leak.
func TestControlCountSetFull(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	controlRuleset(t, w, sipPolicy, func(s string) string {
		return strings.ReplaceAll(s, "\t\tdrop\n\t}\n", "\t}\n")
	})
	fillCounts(t, w)
	w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.squat, Reply: "squatted"})
	if r := w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}); string(r.Received) != "squatted" {
		t.Errorf("control: the squatter got nothing (%v) with the last rule gone; the full-set test would prove nothing", r)
	}
}
