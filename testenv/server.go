package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv/internal/wire"
)

// Proto is a transport protocol.
type Proto string

// Protocols a peer speaks.
const (
	TCP     Proto = "tcp"
	UDP     Proto = "udp"
	UDPLite Proto = "udplite"
)

// ServeConfig describes a server. The zero value of each field is a plain
// server: TCP, serving as root, replying "hello from 0".
type ServeConfig struct {
	Proto Proto          // TCP if empty
	Addr  netip.AddrPort // [::]:P listens on both IPv4 and IPv6
	As    Cred           // accepts, reads and replies as this uid

	// ListenAs, if set, creates the listening socket instead of As: the
	// process creates and binds it as ListenAs, then drops to As before
	// accepting, like nginx (&Root) or an owner handing its listener to a
	// worker. Netfilter attributes the listener (and its SYN-ACKs) to
	// ListenAs and the accepted connections to As.
	ListenAs *Cred

	Reply string // sent on each connection or datagram; "hello from <As.UID>" if empty

	// ZeroBacklog listens with backlog 0, so the SYN queue is always full
	// and the kernel answers every SYN with a syncookie SYN-ACK, which
	// carries no socket.
	ZeroBacklog bool
	// AcceptDelay holds accept() back after listening; with ZeroBacklog it
	// keeps handshakes on the syncookie path.
	AcceptDelay time.Duration
	// ReplyAndClose reads the request, writes the reply and closes at once,
	// so the reply's retransmits and the FIN leave from an orphaned socket.
	ReplyAndClose bool
	// Reset reads the request, writes the reply and then aborts the
	// connection with an RST, as a server does that crashes or gives up.
	Reset bool
	// Silent reads every request and never replies: a squatter that only
	// listens in.
	Silent bool
	// FastOpen takes data in a client's SYN that carries a valid cookie
	// (TCP_FASTOPEN), and FastOpenNoCookie in one that carries none; the
	// namespace's net.ipv4.tcp_fastopen must enable servers.
	FastOpen, FastOpenNoCookie bool
	// Connect connects a UDP server's socket to one client after binding:
	// the kernel then hands that client's datagrams to it rather than to an
	// unconnected socket on the port.
	Connect netip.AddrPort
	// Cgroup, if set, is the cgroup the server runs in.
	Cgroup *Cgroup
	// ListenCgroup, if set, is the cgroup the socket is made in (as root,
	// or ListenAs) before the server joins Cgroup and serves as As: how
	// systemd's PID 1 makes a socket unit's sockets and hands them over.
	ListenCgroup *Cgroup
	// ReusePort sets SO_REUSEPORT before the bind; Steer attaches a
	// classic BPF reuseport steering program ("const:N": member N of the
	// group, "random"), which needs no privilege.
	ReusePort bool
	Steer     string
}

// Server is a running server peer. It is stopped by the test's cleanup.
type Server struct {
	Addr  netip.AddrPort // the bound address
	Reply string         // what it sends to each client
	Cred  ProcCred       // what the process reported after dropping privileges

	proc     *proc
	syncMu   sync.Mutex
	syncs    chan struct{}
	stopOnce sync.Once
	stopped  bool

	mu     sync.Mutex
	ready  chan wire.Event
	conns  []*Conn
	byID   map[int]*Conn
	errs   []string
	badOut []string
}

// Conn is what a server saw of one TCP connection or one UDP datagram.
type Conn struct {
	Remote string // client address, ip:port
	Data   []byte // every byte the server read
}

// Serve starts a server in n and returns once it listens.
func (n *NS) Serve(t testing.TB, cfg ServeConfig) *Server {
	t.Helper()
	RequireNetNS(t)
	if cfg.Proto == "" {
		cfg.Proto = TCP
	}
	if cfg.Reply == "" {
		cfg.Reply = "hello from " + strconv.FormatUint(uint64(cfg.As.UID), 10)
	}
	args := []string{"serve",
		"-proto", string(cfg.Proto),
		"-addr", cfg.Addr.String(),
		"-uid", strconv.FormatUint(uint64(cfg.As.UID), 10),
		"-gid", strconv.FormatUint(uint64(cfg.As.GID), 10),
		"-reply", cfg.Reply,
	}
	if cfg.ListenAs != nil {
		args = append(args,
			"-listen-uid", strconv.FormatUint(uint64(cfg.ListenAs.UID), 10),
			"-listen-gid", strconv.FormatUint(uint64(cfg.ListenAs.GID), 10))
	}
	if cfg.ZeroBacklog {
		args = append(args, "-backlog", "0")
	}
	if cfg.AcceptDelay > 0 {
		args = append(args, "-accept-delay", cfg.AcceptDelay.String())
	}
	if cfg.ReplyAndClose {
		args = append(args, "-reply-and-close")
	}
	if cfg.Reset {
		args = append(args, "-reset")
	}
	if cfg.Silent {
		args = append(args, "-silent")
	}
	if cfg.FastOpen {
		args = append(args, "-tfo")
	}
	if cfg.FastOpenNoCookie {
		args = append(args, "-tfo-no-cookie")
	}
	if cfg.Connect.IsValid() {
		args = append(args, "-connect", cfg.Connect.String())
	}
	if cfg.Cgroup != nil {
		args = append(args, "-cgroup", cfg.Cgroup.Dir)
	}
	if cfg.ListenCgroup != nil {
		args = append(args, "-listen-cgroup", cfg.ListenCgroup.Dir)
	}
	if cfg.ReusePort {
		args = append(args, "-reuseport")
	}
	if cfg.Steer != "" {
		args = append(args, "-steer", cfg.Steer)
	}
	s := &Server{
		Reply: cfg.Reply,
		syncs: make(chan struct{}, 1),
		ready: make(chan wire.Event, 1),
		byID:  map[int]*Conn{},
	}
	s.proc = startPeer(t, n, s.onLine, args...)
	t.Cleanup(func() { s.Stop(t) })

	select {
	case ev := <-s.ready:
		var err error
		if s.Addr, err = netip.ParseAddrPort(ev.Addr); err != nil {
			t.Fatalf("parse server address: %v", err)
		}
		c := ev.Cred
		s.Cred = ProcCred{UID: c.UID, EUID: c.EUID, GID: c.GID, EGID: c.EGID, Groups: c.Groups}
	case <-s.proc.done:
		t.Fatalf("%s exited before listening: %v\n%s", s.proc, s.proc.waitErr, s.proc.stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("%s not listening after 10s\n%s", s.proc, s.proc.stderr.String())
	}
	return s
}

func (s *Server) onLine(line []byte) {
	var ev wire.Event
	if err := json.Unmarshal(line, &ev); err != nil {
		s.mu.Lock()
		s.badOut = append(s.badOut, string(line))
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ev.Ev {
	// Never block here: a stuck reader would leave the peer stuck on a
	// full pipe and Stop waiting for it.
	case wire.EvReady:
		select {
		case s.ready <- ev:
		default:
		}
	case wire.EvSync:
		select {
		case s.syncs <- struct{}{}:
		default:
		}
	case wire.EvAccept:
		c := &Conn{Remote: ev.Remote}
		s.conns = append(s.conns, c)
		s.byID[ev.Conn] = c
	case wire.EvRead:
		if c := s.byID[ev.Conn]; ev.Conn != 0 && c != nil {
			c.Data = append(c.Data, ev.Data...)
		} else {
			s.conns = append(s.conns, &Conn{Remote: ev.Remote, Data: ev.Data})
		}
	case wire.EvError:
		s.errs = append(s.errs, ev.Err)
	}
}

// sync waits until every event the peer emitted before now has been
// recorded: the peer reports a read before it replies, so after a client got
// its reply, the bytes the server read are already counted.
func (s *Server) sync(t testing.TB) {
	t.Helper()
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	if s.proc.exited() {
		if !stopped {
			// A crashed squatter "reads nothing" too; that must not pass.
			t.Fatalf("%s exited while serving: %v\n%s", s.proc, s.proc.waitErr, s.proc.stderr.String())
		}
		return
	}
	if _, err := fmt.Fprintln(s.proc.stdin, wire.SyncRequest); err != nil {
		t.Fatalf("sync with %s: %v\n%s", s.proc, err, s.proc.stderr.String())
	}
	select {
	case <-s.syncs:
	case <-s.proc.done:
		t.Fatalf("%s exited while serving: %v\n%s", s.proc, s.proc.waitErr, s.proc.stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not answer a sync in 10s\n%s", s.proc, s.proc.stderr.String())
	}
}

// Conns returns what the server saw so far: one Conn per accepted TCP
// connection or per UDP datagram, in order.
func (s *Server) Conns(t testing.TB) []Conn {
	t.Helper()
	s.sync(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Conn, len(s.conns))
	for i, c := range s.conns {
		out[i] = Conn{Remote: c.Remote, Data: bytes.Clone(c.Data)}
	}
	return out
}

// Received returns every byte the server has read so far, over all
// connections or datagrams; empty means it read nothing.
func (s *Server) Received(t testing.TB) []byte {
	t.Helper()
	var all []byte
	for _, c := range s.Conns(t) {
		all = append(all, c.Data...)
	}
	return all
}

// Stop ends the server (closing its stdin, killing it if it does not exit)
// and waits for it. What it read stays available. Cleanup calls Stop too.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
		s.proc.stdin.Close()
		select {
		case <-s.proc.done:
		case <-time.After(5 * time.Second):
			s.proc.cmd.Process.Kill()
			<-s.proc.done
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.errs) > 0 {
			t.Logf("%s reported: %q", s.proc, s.errs)
		}
		if len(s.badOut) > 0 {
			t.Errorf("%s wrote lines that are not events: %q", s.proc, s.badOut)
		}
	})
}

// TryBind binds a socket on addr as cred inside n and returns at once,
// closing it: "ok", or the errno's name ("EACCES", "EPERM",
// "EADDRINUSE"). Being refused is the answer, not a test failure. cg, when
// given, is the cgroup the bind happens in.
func (n *NS) TryBind(t testing.TB, proto Proto, addr netip.AddrPort, as Cred, cg ...*Cgroup) string {
	t.Helper()
	RequireNetNS(t)
	if proto == "" {
		proto = TCP
	}
	args := []string{"--net=" + n.Path, "--", peerPath(t), "bind",
		"-proto", string(proto), "-addr", addr.String(),
		"-uid", strconv.FormatUint(uint64(as.UID), 10), "-gid", strconv.FormatUint(uint64(as.GID), 10)}
	if len(cg) > 0 && cg[0] != nil {
		args = append(args, "-cgroup", cg[0].Dir)
	}
	stdout, stderr, err := run(nil, "nsenter", args...)
	if err != nil {
		t.Fatalf("bind probe %s %s as %v: %v\n%s", proto, addr, as, err, stderr)
	}
	return strings.TrimSpace(stdout)
}
