package testenv

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv/internal/wire"
)

// DialConfig describes a client. Timeouts are short by default because a
// blocked exchange always runs into them.
type DialConfig struct {
	Proto      Proto          // TCP if empty
	Addr       netip.AddrPort // server to reach
	As         Cred           // connects as this uid
	SourcePort uint16         // local port to bind; 0 lets the kernel choose
	Request    string         // sent to the server; "hello" if empty

	// FastOpen puts the request in the SYN (TCP_FASTOPEN_CONNECT), with a
	// cookie the namespace cached from an earlier connection, or none with
	// FastOpenNoCookie.
	FastOpen, FastOpenNoCookie bool
	// Hold keeps a TCP client's write side open (no FIN after the
	// request): it reads until the server ends the connection.
	Hold bool
	// Broadcast sets SO_BROADCAST on a UDP client, to send to a broadcast
	// address; Device binds the client to an interface (SO_BINDTODEVICE),
	// which the limited broadcast 255.255.255.255 needs to leave. (A
	// link-local or multicast IPv6 Addr carries its interface as its zone:
	// ff02::1%veth0.)
	Broadcast bool
	Device    string
	// Cgroup, if set, is the cgroup the client runs in.
	Cgroup *Cgroup

	ConnectTimeout time.Duration // TCP handshake; 1.5s if zero
	// Timeout bounds the wait for the reply once connected (UDP: once
	// sent); 2s for TCP and 1s for UDP if zero. Raise it above a server's
	// AcceptDelay.
	Timeout time.Duration
}

// Result is what one client saw.
type Result struct {
	Proto     Proto
	Addr      netip.AddrPort
	Connected bool   // TCP: the handshake completed; UDP: the datagram was sent
	Received  []byte // every byte of the reply
	Err       string // why the exchange ended early, if it did
	Local     string // local address, ip:port, once connected
	Cred      ProcCred
}

func (r Result) String() string {
	s := fmt.Sprintf("%s client (uid %d) to %s: connected=%t received=%q", r.Proto, r.Cred.UID, r.Addr, r.Connected, r.Received)
	if r.Err != "" {
		s += " err=" + r.Err
	}
	return s
}

// Dial runs one client in n and returns what it saw. Failing to connect is a
// result, not a test failure; failing to run the client is.
func (n *NS) Dial(t testing.TB, cfg DialConfig) Result {
	t.Helper()
	return n.DialN(t, cfg, 1)[0]
}

// DialN runs count clients at once, all from one process, so their
// handshakes really overlap (several SYNs in flight on a listener with a
// full queue go through syncookies).
func (n *NS) DialN(t testing.TB, cfg DialConfig, count int) []Result {
	t.Helper()
	RequireNetNS(t)
	if cfg.Proto == "" {
		cfg.Proto = TCP
	}
	if cfg.Request == "" {
		cfg.Request = "hello"
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 1500 * time.Millisecond
	}
	if cfg.Timeout == 0 {
		// A blocked exchange always waits this long; a delivered one
		// takes well under a millisecond between two namespaces.
		cfg.Timeout = 2 * time.Second
		if cfg.Proto != TCP {
			cfg.Timeout = time.Second
		}
	}
	args := []string{"dial",
		"-proto", string(cfg.Proto),
		"-addr", cfg.Addr.String(),
		"-uid", strconv.FormatUint(uint64(cfg.As.UID), 10),
		"-gid", strconv.FormatUint(uint64(cfg.As.GID), 10),
		"-sport", strconv.Itoa(int(cfg.SourcePort)),
		"-send", cfg.Request,
		"-connect-timeout", cfg.ConnectTimeout.String(),
		"-timeout", cfg.Timeout.String(),
		"-parallel", strconv.Itoa(count),
	}
	if cfg.FastOpen {
		args = append(args, "-tfo")
	}
	if cfg.FastOpenNoCookie {
		args = append(args, "-tfo-no-cookie")
	}
	if cfg.Hold {
		args = append(args, "-hold")
	}
	if cfg.Broadcast {
		args = append(args, "-broadcast")
	}
	if cfg.Device != "" {
		args = append(args, "-device", cfg.Device)
	}
	if cfg.Cgroup != nil {
		args = append(args, "-cgroup", cfg.Cgroup.Dir)
	}
	var (
		mu      sync.Mutex
		results []Result
		bad     []string
	)
	p := startPeer(t, n, func(line []byte) {
		var r wire.Result
		mu.Lock()
		defer mu.Unlock()
		if err := json.Unmarshal(line, &r); err != nil {
			bad = append(bad, string(line))
			return
		}
		c := r.Cred
		results = append(results, Result{
			Proto:     cfg.Proto,
			Addr:      cfg.Addr,
			Connected: r.Connected,
			Received:  r.Received,
			Err:       r.Err,
			Local:     r.Local,
			Cred:      ProcCred{UID: c.UID, EUID: c.EUID, GID: c.GID, EGID: c.EGID, Groups: c.Groups},
		})
	}, args...)
	defer p.stdin.Close()
	limit := cfg.ConnectTimeout + cfg.Timeout + 10*time.Second
	select {
	case <-p.done:
	case <-time.After(limit):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s still running after %v\n%s", p, limit, p.stderr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if p.waitErr != nil || len(bad) > 0 || len(results) != count {
		t.Fatalf("%s: %v, %d of %d results, bad lines %q\n%s", p, p.waitErr, len(results), count, bad, p.stderr.String())
	}
	return results
}

// Delivered checks that the client connected and received exactly want, and
// reports the result otherwise.
func Delivered(t testing.TB, r Result, want string) bool {
	t.Helper()
	if !r.Connected || string(r.Received) != want {
		t.Errorf("want delivered %q, got %v", want, r)
		return false
	}
	return true
}

// Blocked checks that the client received no byte of a reply. A TCP client
// may still have connected: a syncookie handshake completes without the
// server's socket, and a connection that yields no data is blocked too.
func Blocked(t testing.TB, r Result) bool {
	t.Helper()
	if len(r.Received) != 0 {
		t.Errorf("want blocked, got %v", r)
		return false
	}
	return true
}
