// Command peer is the process the testenv harness runs inside a network
// namespace: a TCP or UDP server, or a client, running as a given uid.
//
// It is started as root (by nsenter, already inside the namespace) and drops
// privileges itself, because the order of "create the socket" and "drop to
// uid W" is what the tests are about: netfilter's meta skuid sees the
// credentials of whoever created the socket (or accepted it), not of whoever
// uses it later.
//
// Usage:
//
//	peer serve -proto tcp|udp -addr IP:PORT -uid U -gid G [-listen-uid O -listen-gid OG] ...
//	peer dial  -proto tcp|udp -addr IP:PORT -uid U -gid G [-sport P] [-parallel N] ...
//
// It speaks the line protocol of package wire on stdout. A server exits when
// its stdin closes, so it never outlives the harness that started it.
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/testenv/internal/wire"
)

func main() {
	if len(os.Args) < 2 {
		fatal(errors.New("usage: peer serve|dial [flags]"))
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "dial":
		err = dial(os.Args[2:])
	case "bind":
		err = tryBind(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fatal(err)
	}
}

// tryBind binds a socket as uid/gid and prints the outcome: "ok", or the
// errno's name. Not being allowed to bind is the answer, not a failure.
func tryBind(args []string) error {
	fs := flag.NewFlagSet("bind", flag.ContinueOnError)
	proto := fs.String("proto", "tcp", "tcp or udp")
	addr := fs.String("addr", "", "address:port to bind")
	uid := fs.Int("uid", -1, "uid to bind as")
	gid := fs.Int("gid", -1, "gid to bind as")
	cgroup := fs.String("cgroup", "", "cgroup v2 directory to join first")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil {
		return err
	}
	if err := joinCgroup(*cgroup); err != nil {
		return err
	}
	if err := become(*uid, *gid); err != nil {
		return err
	}
	family := syscall.AF_INET6
	if ap.Addr().Is4() {
		family = syscall.AF_INET
	}
	typ, protocol, err := sockType(*proto)
	if err != nil {
		return err
	}
	fd, err := syscall.Socket(family, typ, protocol)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(fd)
	var sa syscall.Sockaddr = &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if family == syscall.AF_INET {
		sa = &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	result := "ok"
	if err := syscall.Bind(fd, sa); err != nil {
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			return fmt.Errorf("bind: %w", err)
		}
		result = errnoName(errno)
	}
	fmt.Println(result)
	return nil
}

// sockType is the socket type and protocol number of a protocol name.
func sockType(proto string) (typ, protocol int, err error) {
	switch proto {
	case "tcp":
		return syscall.SOCK_STREAM, 0, nil
	case "udp":
		return syscall.SOCK_DGRAM, 0, nil
	case "udplite":
		return syscall.SOCK_DGRAM, ipprotoUDPLite, nil
	}
	return 0, 0, fmt.Errorf("unknown proto %q", proto)
}

const (
	ipprotoUDPLite         = 136
	tcpFastopen            = 23 // TCP_FASTOPEN: the queue length of a listener
	tcpFastopenConnect     = 30 // TCP_FASTOPEN_CONNECT: the first write goes in the SYN
	tcpFastopenNoCookie    = 34 // TCP_FASTOPEN_NO_COOKIE
	udpliteSendCscov       = 10 // UDPLITE_SEND_CSCOV
	udpliteRecvCscov       = 11 // UDPLITE_RECV_CSCOV
	solUDPLite             = 136
	defaultUDPLiteCoverage = 8 // the header only
)

// joinCgroup moves this process into a cgroup v2 directory, before it does
// anything else: the cgroup decides which bind guard sees its binds.
func joinCgroup(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.WriteFile(dir+"/cgroup.procs", []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
		return fmt.Errorf("join cgroup %s: %w", dir, err)
	}
	return nil
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EACCES:
		return "EACCES"
	case syscall.EPERM:
		return "EPERM"
	case syscall.EADDRINUSE:
		return "EADDRINUSE"
	case syscall.EPROTONOSUPPORT:
		return "EPROTONOSUPPORT"
	}
	return fmt.Sprintf("errno %d (%v)", int(e), e)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "peer:", err)
	os.Exit(1)
}

// out serialises stdout: each line is written by one Write, so lines from
// concurrent connections never interleave.
var out struct {
	sync.Mutex
	enc *json.Encoder
}

func emit(v any) {
	out.Lock()
	defer out.Unlock()
	if out.enc == nil {
		out.enc = json.NewEncoder(os.Stdout)
	}
	if err := out.enc.Encode(v); err != nil {
		// The harness is gone; nobody is left to serve.
		os.Exit(2)
	}
}

// become drops to uid/gid for good. Go's syscall package applies these to
// every thread of the process, so no goroutine keeps root.
func become(uid, gid int) error {
	if uid < 0 {
		return nil
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop groups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("set gid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("set uid %d: %w", uid, err)
	}
	return nil
}

// asEffective runs f with effective uid/gid set to uid/gid while the saved ids
// stay 0, so a socket created in f carries uid's credentials and the process
// can become root again afterwards (to drop to another uid, as a
// socket-activated service or an owner handing its listener to a worker would).
func asEffective(uid, gid int, f func() error) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop groups: %w", err)
	}
	if err := syscall.Setresgid(-1, gid, -1); err != nil {
		return fmt.Errorf("set egid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(-1, uid, -1); err != nil {
		return fmt.Errorf("set euid %d: %w", uid, err)
	}
	ferr := f()
	if err := syscall.Setresuid(-1, 0, -1); err != nil {
		return fmt.Errorf("restore euid: %w", err)
	}
	if err := syscall.Setresgid(-1, 0, -1); err != nil {
		return fmt.Errorf("restore egid: %w", err)
	}
	return ferr
}

// steer attaches a classic BPF reuseport steering program: "const:N"
// always picks member N of the group, "random" member 0 or 1.
func steer(fd int, spec string) error {
	var prog []unix.SockFilter
	if spec == "random" {
		prog = []unix.SockFilter{
			{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0xfffff000 + 56}, // SKF_AD_OFF + SKF_AD_RANDOM
			{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 1},
			{Code: unix.BPF_RET | unix.BPF_A},
		}
	} else {
		var n uint32
		if _, err := fmt.Sscanf(spec, "const:%d", &n); err != nil {
			return fmt.Errorf("-steer %q: want const:N or random", spec)
		}
		prog = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: n}}
	}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		return fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", err)
	}
	return nil
}

func creds() wire.Cred {
	c := wire.Cred{
		UID:    uint32(syscall.Getuid()),
		EUID:   uint32(syscall.Geteuid()),
		GID:    uint32(syscall.Getgid()),
		EGID:   uint32(syscall.Getegid()),
		Groups: []uint32{},
	}
	gs, _ := syscall.Getgroups()
	for _, g := range gs {
		c.Groups = append(c.Groups, uint32(g))
	}
	return c
}

// socket opens and binds a socket by hand rather than with net.Listen, to
// control the listen backlog (0 forces syncookies) and the moment the socket
// is created (that is when its credentials are fixed).
func socket(ap netip.AddrPort, typ, protocol int, reuseport bool) (int, error) {
	family := syscall.AF_INET6
	if ap.Addr().Is4() {
		family = syscall.AF_INET
	}
	fd, err := syscall.Socket(family, typ|syscall.SOCK_CLOEXEC, protocol)
	if err != nil {
		return -1, fmt.Errorf("create socket: %w", err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	if reuseport {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			syscall.Close(fd)
			return -1, fmt.Errorf("set SO_REUSEPORT: %w", err)
		}
	}
	var sa syscall.Sockaddr
	if family == syscall.AF_INET {
		sa = &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		// "::" means both families, anything else only IPv6: the kernel
		// default depends on a sysctl, so say it.
		v6only := 1
		if ap.Addr().IsUnspecified() {
			v6only = 0
		}
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, v6only); err != nil {
			syscall.Close(fd)
			return -1, fmt.Errorf("set IPV6_V6ONLY: %w", err)
		}
		sa = &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", ap, err)
	}
	return fd, nil
}

type serveConfig struct {
	proto         string
	addr          netip.AddrPort
	uid, gid      int
	listenUID     int
	listenGID     int
	reply         string
	backlog       int
	acceptDelay   time.Duration
	replyAndClose bool
	reset         bool
	readTimeout   time.Duration
	silent        bool   // read, never reply
	tfo           bool   // TCP: accept data in the SYN with a valid cookie (TCP_FASTOPEN)
	tfoNoCookie   bool   // and without one (TCP_FASTOPEN_NO_COOKIE)
	connect       string // UDP: connect the bound socket to this peer (steals its flow)
	cgroup        string
	// reuseport joins an SO_REUSEPORT group; steer attaches a classic BPF
	// steering program to it (SO_ATTACH_REUSEPORT_CBPF, no privilege
	// needed): "const:N" picks member N, "random" member 0 or 1.
	reuseport bool
	steer     string
	// listenCgroup, if set, is where the socket is made (as root, or
	// -listen-uid); then the process joins -cgroup and serves as -uid:
	// systemd's socket activation, where PID 1 makes the socket.
	listenCgroup string
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c serveConfig
	var addr string
	fs.StringVar(&c.proto, "proto", "tcp", "tcp or udp")
	fs.StringVar(&addr, "addr", "", "address to listen on, IP:PORT")
	fs.IntVar(&c.uid, "uid", -1, "uid to serve as (-1: stay root)")
	fs.IntVar(&c.gid, "gid", -1, "gid to serve as")
	fs.IntVar(&c.listenUID, "listen-uid", -1, "uid that creates the socket, if not -uid")
	fs.IntVar(&c.listenGID, "listen-gid", -1, "gid that creates the socket, if not -gid")
	fs.StringVar(&c.reply, "reply", "", "reply to each request (default \"hello from UID\")")
	fs.IntVar(&c.backlog, "backlog", 128, "listen backlog; 0 makes the kernel answer with syncookies")
	fs.DurationVar(&c.acceptDelay, "accept-delay", 0, "wait this long after listening before accepting")
	fs.BoolVar(&c.replyAndClose, "reply-and-close", false, "read the request, write the reply and close at once (orphan retransmits)")
	fs.BoolVar(&c.reset, "reset", false, "read the request, write the reply, then abort the connection with an RST (SO_LINGER 0)")
	fs.DurationVar(&c.readTimeout, "read-timeout", 2*time.Second, "give up reading a connection after this long")
	fs.BoolVar(&c.silent, "silent", false, "read requests and never reply")
	fs.BoolVar(&c.tfo, "tfo", false, "TCP: take data in a SYN with a valid cookie (TCP Fast Open)")
	fs.BoolVar(&c.tfoNoCookie, "tfo-no-cookie", false, "with -tfo: also without a cookie")
	fs.StringVar(&c.connect, "connect", "", "UDP: connect the socket to this IP:PORT after binding")
	fs.StringVar(&c.cgroup, "cgroup", "", "cgroup v2 directory to join first")
	fs.BoolVar(&c.reuseport, "reuseport", false, "set SO_REUSEPORT before binding")
	fs.StringVar(&c.steer, "steer", "", "attach a reuseport steering program: const:N or random")
	fs.StringVar(&c.listenCgroup, "listen-cgroup", "", "cgroup v2 directory to make the socket in, before joining -cgroup")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if c.addr, err = netip.ParseAddrPort(addr); err != nil {
		return fmt.Errorf("parse addr: %w", err)
	}
	if err := joinCgroup(cmp.Or(c.listenCgroup, c.cgroup)); err != nil {
		return err
	}
	if c.reply == "" {
		uid := c.uid
		if uid < 0 {
			uid = syscall.Getuid()
		}
		c.reply = fmt.Sprintf("hello from %d", uid)
	}
	if c.listenUID < 0 {
		c.listenUID, c.listenGID = c.uid, c.gid
	}

	typ, protocol, err := sockType(c.proto)
	if err != nil {
		return err
	}
	fd := -1
	open := func() error {
		var err error
		if fd, err = socket(c.addr, typ, protocol, c.reuseport); err != nil {
			return err
		}

		if typ == syscall.SOCK_STREAM {
			if c.tfo {
				if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpFastopen, 16); err != nil {
					return fmt.Errorf("set TCP_FASTOPEN: %w", err)
				}
				if c.tfoNoCookie {
					if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpFastopenNoCookie, 1); err != nil {
						return fmt.Errorf("set TCP_FASTOPEN_NO_COOKIE: %w", err)
					}
				}
			}
			if err := syscall.Listen(fd, c.backlog); err != nil {
				return fmt.Errorf("listen: %w", err)
			}
		} else if c.connect != "" {
			to, err := netip.ParseAddrPort(c.connect)
			if err != nil {
				return fmt.Errorf("parse -connect: %w", err)
			}
			var sa syscall.Sockaddr = &syscall.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
			if c.addr.Addr().Is4() {
				sa = &syscall.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
			}
			if err := syscall.Connect(fd, sa); err != nil {
				return fmt.Errorf("connect to %s: %w", to, err)
			}
		}
		if protocol == ipprotoUDPLite {
			if err := udpliteCoverage(fd); err != nil {
				return err
			}
		}
		if c.steer != "" {
			// TCP joins its group at listen(), so the program goes on
			// after it.
			return steer(fd, c.steer)
		}
		return nil
	}
	if c.listenCgroup != "" {
		err = asEffective(c.listenUID, c.listenGID, open)
		if err == nil {
			err = joinCgroup(c.cgroup)
		}
		if err == nil {
			err = become(c.uid, c.gid)
		}
	} else if c.listenUID == c.uid && c.listenGID == c.gid {
		err = become(c.uid, c.gid)
		if err == nil {
			err = open()
		}
	} else {
		err = asEffective(c.listenUID, c.listenGID, open)
		if err == nil {
			err = become(c.uid, c.gid)
		}
	}
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "socket")
	cred := creds()

	if typ == syscall.SOCK_DGRAM && c.connect != "" {
		// A connected datagram socket: read and write with the plain calls,
		// as the file conn wrappers do not do connected UDP.
		emit(wire.Event{Ev: wire.EvReady, Addr: c.addr.String(), Cred: &cred})
		go serveConnected(fd, c)
	} else if typ == syscall.SOCK_DGRAM {
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return fmt.Errorf("wrap socket: %w", err)
		}
		f.Close()
		emit(wire.Event{Ev: wire.EvReady, Addr: pc.LocalAddr().String(), Cred: &cred})
		go serveUDP(pc.(*net.UDPConn), c)
	} else {
		ln, err := net.FileListener(f)
		if err != nil {
			return fmt.Errorf("wrap socket: %w", err)
		}
		f.Close()
		emit(wire.Event{Ev: wire.EvReady, Addr: ln.Addr().String(), Cred: &cred})
		go serveTCP(ln, c)
	}
	return control()
}

// control answers sync requests and returns when stdin closes.
func control() error {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == wire.SyncRequest {
			emit(wire.Event{Ev: wire.EvSync})
		}
	}
	return nil
}

func serveTCP(ln net.Listener, c serveConfig) {
	if c.acceptDelay > 0 {
		time.Sleep(c.acceptDelay)
	}
	for id := 1; ; id++ {
		conn, err := ln.Accept()
		if err != nil {
			emit(wire.Event{Ev: wire.EvError, Err: fmt.Sprintf("accept: %v", err)})
			return
		}
		emit(wire.Event{Ev: wire.EvAccept, Conn: id, Remote: conn.RemoteAddr().String()})
		go handleTCP(conn, id, c)
	}
}

func handleTCP(conn net.Conn, id int, c serveConfig) {
	defer conn.Close()
	if c.silent {
		conn.SetReadDeadline(time.Now().Add(c.readTimeout))
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				emit(wire.Event{Ev: wire.EvRead, Conn: id, Data: append([]byte(nil), buf[:n]...)})
			}
			if err != nil {
				return
			}
		}
	}
	// readThenReply reads the request (or waits readTimeout for one) and
	// writes the reply.
	readThenReply := func() {
		conn.SetReadDeadline(time.Now().Add(c.readTimeout))
		buf := make([]byte, 64<<10)
		if n, _ := conn.Read(buf); n > 0 {
			emit(wire.Event{Ev: wire.EvRead, Conn: id, Data: append([]byte(nil), buf[:n]...)})
		}
		if _, err := io.WriteString(conn, c.reply); err != nil {
			emit(wire.Event{Ev: wire.EvError, Conn: id, Err: fmt.Sprintf("write reply: %v", err)})
		}
	}
	if c.reset {
		// A server that crashes or gives up on a client: the RST leaves
		// conntrack's entry in CLOSE, which a new SYN on the same ports
		// reopens.
		readThenReply()
		time.Sleep(100 * time.Millisecond) // the reply first, then the RST
		conn.(*net.TCPConn).SetLinger(0)
		return
	}
	if c.replyAndClose {
		// Read the request first: closing with unread data would send an
		// RST and discard the reply, while a clean close queues a FIN
		// behind it, so the reply's retransmits leave from the orphan.
		readThenReply()
		return
	}
	conn.SetDeadline(time.Now().Add(c.readTimeout))
	replied := false
	reply := func() {
		replied = true
		if _, err := io.WriteString(conn, c.reply); err != nil {
			emit(wire.Event{Ev: wire.EvError, Conn: id, Err: fmt.Sprintf("write reply: %v", err)})
		}
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			// Report before replying: once a client holds the reply,
			// the harness is sure to find this event when it syncs.
			emit(wire.Event{Ev: wire.EvRead, Conn: id, Data: append([]byte(nil), buf[:n]...)})
			if !replied {
				reply()
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				emit(wire.Event{Ev: wire.EvError, Conn: id, Err: fmt.Sprintf("read: %v", err)})
			}
			break
		}
	}
	// Reading to EOF before closing means the close sends a FIN, not an
	// RST that could discard the reply at the client.
	if !replied {
		reply()
	}
}

// serveConnected serves a connected datagram socket: it reads what its one
// peer sends and answers it.
func serveConnected(fd int, c serveConfig) {
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.Read(fd, buf)
		if err != nil {
			emit(wire.Event{Ev: wire.EvError, Err: fmt.Sprintf("read: %v", err)})
			return
		}
		emit(wire.Event{Ev: wire.EvRead, Remote: c.connect, Data: append([]byte(nil), buf[:n]...)})
		if c.silent {
			continue
		}
		if _, err := syscall.Write(fd, []byte(c.reply)); err != nil {
			emit(wire.Event{Ev: wire.EvError, Err: fmt.Sprintf("write reply: %v", err)})
		}
	}
}

// udpliteCoverage makes a UDP-Lite socket checksum its header only, and
// accept datagrams that do the same.
func udpliteCoverage(fd int) error {
	for _, opt := range []int{udpliteSendCscov, udpliteRecvCscov} {
		if err := syscall.SetsockoptInt(fd, solUDPLite, opt, defaultUDPLiteCoverage); err != nil {
			return fmt.Errorf("set UDP-Lite checksum coverage: %w", err)
		}
	}
	return nil
}

func serveUDP(pc *net.UDPConn, c serveConfig) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			emit(wire.Event{Ev: wire.EvError, Err: fmt.Sprintf("read: %v", err)})
			return
		}
		emit(wire.Event{Ev: wire.EvRead, Remote: from.String(), Data: append([]byte(nil), buf[:n]...)})
		if c.silent {
			continue
		}
		if _, err := pc.WriteToUDPAddrPort([]byte(c.reply), from); err != nil {
			emit(wire.Event{Ev: wire.EvError, Remote: from.String(), Err: fmt.Sprintf("write reply: %v", err)})
		}
	}
}

type dialConfig struct {
	proto          string
	addr           string
	uid, gid       int
	sport          int
	send           string
	connectTimeout time.Duration
	timeout        time.Duration
	parallel       int
	tfo            bool   // TCP: put the request in the SYN (TCP_FASTOPEN_CONNECT)
	tfoNoCookie    bool   // and send it without a cookie
	hold           bool   // TCP: never half-close
	broadcast      bool   // UDP: SO_BROADCAST
	device         string // SO_BINDTODEVICE (a limited broadcast needs one)
	cgroup         string
}

func dial(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ContinueOnError)
	var c dialConfig
	fs.StringVar(&c.proto, "proto", "tcp", "tcp or udp")
	fs.StringVar(&c.addr, "addr", "", "address to connect to, IP:PORT")
	fs.IntVar(&c.uid, "uid", -1, "uid to connect as (-1: stay root)")
	fs.IntVar(&c.gid, "gid", -1, "gid to connect as")
	fs.IntVar(&c.sport, "sport", 0, "local (source) port; 0 lets the kernel choose")
	fs.StringVar(&c.send, "send", "hello", "request to send")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 1500*time.Millisecond, "TCP connect timeout")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Second, "how long to wait for the reply once connected (UDP: once sent)")
	fs.IntVar(&c.parallel, "parallel", 1, "number of clients at once")
	fs.BoolVar(&c.tfo, "tfo", false, "TCP: send the request in the SYN (TCP Fast Open)")
	fs.BoolVar(&c.tfoNoCookie, "tfo-no-cookie", false, "with -tfo: without a cookie")
	fs.BoolVar(&c.hold, "hold", false, "TCP: never half-close; read until the server ends the connection")
	fs.BoolVar(&c.broadcast, "broadcast", false, "UDP: set SO_BROADCAST, to send to a broadcast address")
	fs.StringVar(&c.device, "device", "", "bind the socket to this interface (SO_BINDTODEVICE)")
	fs.StringVar(&c.cgroup, "cgroup", "", "cgroup v2 directory to join first")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, _, err := sockType(c.proto); err != nil {
		return err
	}
	if err := joinCgroup(c.cgroup); err != nil {
		return err
	}
	if err := become(c.uid, c.gid); err != nil {
		return err
	}
	cred := creds()
	results := make([]wire.Result, c.parallel)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			results[i] = dialOne(c)
			results[i].Cred = cred
		})
	}
	wg.Wait()
	for _, r := range results {
		emit(r)
	}
	return nil
}

func dialOne(c dialConfig) wire.Result {
	if c.proto == "udplite" {
		return dialUDPLite(c)
	}
	var r wire.Result
	d := net.Dialer{
		Timeout: c.connectTimeout,
		// A fixed source port may still be held by TIME_WAIT from an
		// earlier client; SO_REUSEADDR lets the bind succeed anyway.
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
				if serr == nil && c.tfo {
					serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpFastopenConnect, 1)
				}
				if serr == nil && c.tfoNoCookie {
					serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpFastopenNoCookie, 1)
				}
				if serr == nil && c.broadcast {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
				}
				if serr == nil && c.device != "" {
					serr = syscall.BindToDevice(int(fd), c.device)
				}
			})
			return errors.Join(err, serr)
		},
	}
	if c.sport != 0 {
		if c.proto == "tcp" {
			d.LocalAddr = &net.TCPAddr{Port: c.sport}
		} else {
			d.LocalAddr = &net.UDPAddr{Port: c.sport}
		}
	}
	conn, err := d.Dial(c.proto, c.addr)
	if err != nil {
		r.Err = fmt.Sprintf("dial: %v", err)
		return r
	}
	defer conn.Close()
	r.Local, r.Remote = conn.LocalAddr().String(), conn.RemoteAddr().String()
	// For UDP, "connected" means the datagram went out.
	r.Connected = c.proto == "tcp"
	conn.SetDeadline(time.Now().Add(c.timeout))
	if c.proto == "udp" {
		if _, err := io.WriteString(conn, c.send); err != nil {
			r.Err = fmt.Sprintf("write request: %v", err)
			return r
		}
		r.Connected = true
		buf := make([]byte, 64<<10)
		n, err := conn.Read(buf)
		r.Received = buf[:n]
		if err != nil {
			r.Err = fmt.Sprintf("read reply: %v", err)
		}
		return r
	}
	if c.tfo {
		// The request goes in the SYN; a half-close before the handshake
		// completes would reset the connection. Read the reply once.
		if _, err := io.WriteString(conn, c.send); err != nil {
			r.Err = fmt.Sprintf("write request: %v", err)
			return r
		}
		buf := make([]byte, 64<<10)
		n, err := conn.Read(buf)
		r.Received = buf[:n]
		if err != nil {
			r.Err = fmt.Sprintf("read reply: %v", err)
		}
		return r
	}
	// A server may have replied and reset the connection before the
	// request is out; the reply still waits in the receive queue, so read
	// whatever happens on the way.
	var errs []string
	if _, err := io.WriteString(conn, c.send); err != nil {
		errs = append(errs, fmt.Sprintf("write request: %v", err))
	} else if c.hold {
		// Keep the write side open: the server ends the connection.
	} else if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		// Half-close so the server sees the whole request end with EOF.
		errs = append(errs, fmt.Sprintf("close write: %v", err))
	}
	r.Received, err = io.ReadAll(conn)
	if err != nil {
		errs = append(errs, fmt.Sprintf("read reply: %v", err))
	}
	r.Err = strings.Join(errs, "; ")
	return r
}

// dialUDPLite is one UDP-Lite exchange, with system calls: the net package
// has no UDP-Lite.
func dialUDPLite(c dialConfig) wire.Result {
	var r wire.Result
	to, err := netip.ParseAddrPort(c.addr)
	if err != nil {
		r.Err = fmt.Sprintf("parse addr: %v", err)
		return r
	}
	family := syscall.AF_INET6
	var sa, local syscall.Sockaddr = &syscall.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}, &syscall.SockaddrInet6{Port: c.sport}
	if to.Addr().Is4() {
		family = syscall.AF_INET
		sa, local = &syscall.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}, &syscall.SockaddrInet4{Port: c.sport}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, ipprotoUDPLite)
	if err != nil {
		r.Err = fmt.Sprintf("socket: %v", err)
		return r
	}
	defer syscall.Close(fd)
	if err := udpliteCoverage(fd); err != nil {
		r.Err = err.Error()
		return r
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if c.sport != 0 {
		if err := syscall.Bind(fd, local); err != nil {
			r.Err = fmt.Sprintf("bind: %v", err)
			return r
		}
	}
	if err := syscall.Connect(fd, sa); err != nil {
		r.Err = fmt.Sprintf("dial: %v", err)
		return r
	}
	tv := syscall.NsecToTimeval(c.timeout.Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if _, err := syscall.Write(fd, []byte(c.send)); err != nil {
		r.Err = fmt.Sprintf("write request: %v", err)
		return r
	}
	r.Connected = true
	buf := make([]byte, 64<<10)
	n, err := syscall.Read(fd, buf)
	if err != nil {
		r.Err = fmt.Sprintf("read reply: %v", err)
		return r
	}
	r.Received = buf[:n]
	return r
}
