package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/model"
)

// Scan audits the sockets of the calling process's network namespace
// against r.
func Scan(r *model.Resolved) (Report, error) {
	socks, err := Sockets()
	if err != nil {
		return Report{}, err
	}
	return Classify(r, socks), nil
}

// Sockets lists the sockets of the calling process's network namespace
// that receive on a local port (sock_diag is per namespace): for every
// protocol of the model's table, IPv4 and IPv6, listeners of stream
// protocols and every bound socket of the others, with the processes
// holding them and their cgroups. Processes are found in /proc, which shows
// every process of the PID namespace whatever its network namespace;
// without root those of other users are missing. Cgroups (which are not
// per network namespace) are named from one walk of the cgroup v2 tree
// after the dump, so every cgroup that still exists is found; a tree that
// cannot be read is an error, since cgroup owners would look like
// squatters.
func Sockets() ([]Socket, error) {
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag: %w", err)
	}
	defer c.Close()
	return socketsFrom(c)
}

// dumpRetries bounds how often a dump the kernel reports as interrupted
// (the socket table changed while it was read) is started again.
const dumpRetries = 5

// tcpListen is TCP_LISTEN in include/net/tcp_states.h.
const tcpListen = 10

const sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY

func socketsFrom(c *netlink.Conn) ([]Socket, error) {
	// A dump that gets no answer must not hang a daemon.
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, fmt.Errorf("set sock_diag timeout: %w", err)
	}
	var out []Socket
	for _, pi := range model.Protocols() {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			var (
				msgs []netlink.Message
				err  error
			)
			for range dumpRetries {
				if msgs, err = dump(c, family, pi); !errors.Is(err, errInterrupted) {
					break
				}
			}
			if errors.Is(err, unix.ENOENT) {
				continue // the kernel has no sock_diag handler for it (module not loaded)
			}
			if err != nil {
				return nil, fmt.Errorf("dump %s%s sockets: %w", pi.Name, familyDigit(family), err)
			}
			for _, m := range msgs {
				if s, ok := parseDiag(m.Data, family, pi.Protocol); ok {
					out = append(out, s)
				}
			}
		}
	}
	want := map[uint64]bool{}
	for _, s := range out {
		want[s.Inode] = true
	}
	holders := processesHolding(want)
	names := userNames()
	anyCgroup := false
	for i := range out {
		out[i].Processes = holders[out[i].Inode]
		out[i].User = names[out[i].UID]
		anyCgroup = anyCgroup || out[i].Cgroup != 0
	}
	if anyCgroup {
		cg, err := ReadCgroups()
		if err != nil {
			return nil, err
		}
		cg.Annotate(out)
	}
	return out, nil
}

func familyDigit(f uint8) string {
	if f == unix.AF_INET6 {
		return "6"
	}
	return "4"
}

// dump asks for every socket of one protocol and family: listeners only
// for stream protocols, whose other sockets got their port from a listener
// or an outgoing connection.
func dump(c *netlink.Conn, family uint8, pi model.ProtocolInfo) ([]netlink.Message, error) {
	states := uint32(0xffffffff)
	if pi.ListenOnly {
		states = 1 << tcpListen
	}
	req := make([]byte, 56) // struct inet_diag_req_v2
	req[0], req[1] = family, uint8(pi.Protocol)
	binary.NativeEndian.PutUint32(req[4:], states)
	// The socket cookie field (id.idiag_cookie, the last 8 bytes) must be
	// INET_DIAG_NOCOOKIE for a dump.
	binary.NativeEndian.PutUint32(req[48:], 0xffffffff)
	binary.NativeEndian.PutUint32(req[52:], 0xffffffff)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	for _, m := range msgs {
		if m.Header.Flags&netlink.DumpInterrupted != 0 {
			return nil, errInterrupted
		}
	}
	return msgs, err
}

// errInterrupted: the socket table changed during the dump.
var errInterrupted = errors.New("dump interrupted")

// inetDiagCgroupID is INET_DIAG_CGROUP_ID (include/uapi/linux/inet_diag.h):
// the u64 id of the socket's cgroup v2, sent for every full socket by
// kernels with CONFIG_SOCK_CGROUP_DATA (4.19 and later).
const inetDiagCgroupID = 21

// parseDiag reads a struct inet_diag_msg: family, state, timer, retrans,
// the socket id (sport, dport, src[4], dst[4] big-endian, interface,
// cookie), expires, rqueue, wqueue, uid, inode; then the attributes, of
// which it takes the cgroup id.
func parseDiag(b []byte, family uint8, proto model.Protocol) (Socket, bool) {
	if len(b) < 72 || b[0] != family {
		return Socket{}, false
	}
	port := binary.BigEndian.Uint16(b[4:6])
	if port == 0 {
		return Socket{}, false
	}
	var addr netip.Addr
	if family == unix.AF_INET {
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	} else {
		addr = netip.AddrFrom16([16]byte(b[8:24]))
	}
	s := Socket{
		Protocol: proto, Addr: addr, Port: port,
		UID:   binary.NativeEndian.Uint32(b[64:68]),
		Inode: uint64(binary.NativeEndian.Uint32(b[68:72])),
	}
	// Attributes are optional: a reply without a readable cgroup id is
	// still a socket.
	if ad, err := netlink.NewAttributeDecoder(b[72:]); err == nil {
		for ad.Next() {
			if ad.Type() == inetDiagCgroupID && len(ad.Bytes()) == 8 {
				s.Cgroup = ad.Uint64()
			}
		}
	}
	return s, true
}

// userNames maps the uids of /etc/passwd to names, for output. (Sockets of
// users only NSS knows show their uid alone.)
func userNames() map[uint32]string {
	out := map[uint32]string{}
	data, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return out
	}
	for line := range strings.Lines(string(data)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 4)
		if len(f) < 3 {
			continue
		}
		if id, err := strconv.ParseUint(f[2], 10, 32); err == nil {
			if _, dup := out[uint32(id)]; !dup {
				out[uint32(id)] = f[0]
			}
		}
	}
	return out
}

// processesHolding maps each socket inode in want to the processes with a
// descriptor on it, found through the /proc/PID/fd/* links
// "socket:[INODE]". Processes that exit during the walk or whose
// descriptors may not be read are skipped: the result is a best effort.
func processesHolding(want map[uint64]bool) map[uint64][]Process {
	out := map[uint64][]Process{}
	if len(want) == 0 {
		return out
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join("/proc", d.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		var held []uint64
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			num, ok := strings.CutPrefix(link, "socket:[")
			if !ok {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(num, "]"), 10, 64)
			if err == nil && want[ino] && !slices.Contains(held, ino) {
				held = append(held, ino)
			}
		}
		if len(held) == 0 {
			continue
		}
		p, ok := readProcess(pid)
		if !ok {
			continue
		}
		for _, ino := range held {
			out[ino] = append(out[ino], p)
		}
	}
	for _, ps := range out {
		slices.SortFunc(ps, func(a, b Process) int { return a.PID - b.PID })
	}
	return out
}

// readProcess reads a process's command name and filesystem gid (the
// fourth field of "Gid:" in /proc/PID/status: real, effective, saved,
// filesystem).
func readProcess(pid int) (Process, bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	comm, err := os.ReadFile(dir + "/comm")
	if err != nil {
		return Process{}, false
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return Process{}, false
	}
	p := Process{PID: pid, Command: strings.TrimSuffix(string(comm), "\n")}
	for line := range strings.Lines(string(status)) {
		rest, ok := strings.CutPrefix(line, "Gid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 4 {
			return Process{}, false
		}
		gid, err := strconv.ParseUint(f[3], 10, 32)
		if err != nil {
			return Process{}, false
		}
		p.FSGID = uint32(gid)
		return p, true
	}
	return Process{}, false
}
