package audit

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/policy"
)

// Scan audits the sockets of the calling process's network namespace
// against r.
func Scan(r *policy.Resolved) (Report, error) {
	socks, err := Sockets()
	if err != nil {
		return Report{}, err
	}
	return Classify(r, socks), nil
}

// Sockets lists the TCP listeners and bound UDP sockets, IPv4 and IPv6, of
// the calling process's network namespace (sock_diag is per namespace),
// with the processes holding them. Processes are found in /proc, which
// shows every process of the PID namespace whatever its network namespace;
// without root those of other users are missing.
func Sockets() ([]Socket, error) {
	h, err := netlink.NewHandle(unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag: %w", err)
	}
	defer h.Close()
	return socketsFrom(h)
}

// tcpListen is TCP_LISTEN in include/net/tcp_states.h.
const tcpListen = 10

// dumpRetries bounds how often a dump the kernel reports as interrupted
// (the socket table changed while it was read) is started again.
const dumpRetries = 5

func socketsFrom(h *netlink.Handle) ([]Socket, error) {
	// A dump that gets no answer must not hang a daemon.
	if err := h.SetSocketTimeout(5 * time.Second); err != nil {
		return nil, fmt.Errorf("set sock_diag timeout: %w", err)
	}
	queries := []struct {
		proto  policy.Protocol
		family uint8
		dump   func(uint8) ([]*netlink.Socket, error)
	}{
		{policy.TCP, unix.AF_INET, h.SocketDiagTCP},
		{policy.TCP, unix.AF_INET6, h.SocketDiagTCP},
		{policy.UDP, unix.AF_INET, h.SocketDiagUDP},
		{policy.UDP, unix.AF_INET6, h.SocketDiagUDP},
	}
	var out []Socket
	for _, q := range queries {
		var (
			ds  []*netlink.Socket
			err error
		)
		for range dumpRetries {
			if ds, err = q.dump(q.family); !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("dump %s sockets: %w", familyName(q.proto, q.family), err)
		}
		for _, d := range ds {
			// TCP: only listeners receive new connections; a connected
			// socket's local port came from a listener or a bind. UDP: any
			// socket with a local port receives on it.
			if (q.proto == policy.TCP && d.State != tcpListen) || d.ID.SourcePort == 0 {
				continue
			}
			addr, ok := netip.AddrFromSlice(d.ID.Source)
			if !ok {
				continue
			}
			if q.family == unix.AF_INET {
				addr = addr.Unmap() // the library hands IPv4 over as 16 bytes
			}
			out = append(out, Socket{Protocol: q.proto, Addr: addr, Port: d.ID.SourcePort, UID: d.UID, Inode: uint64(d.INode)})
		}
	}

	want := map[uint64]bool{}
	for _, s := range out {
		want[s.Inode] = true
	}
	holders := processesHolding(want)
	names := map[uint32]string{}
	for i := range out {
		s := &out[i]
		s.Processes = holders[s.Inode]
		name, ok := names[s.UID]
		if !ok {
			if u, err := user.LookupId(strconv.FormatUint(uint64(s.UID), 10)); err == nil {
				name = u.Username
			}
			names[s.UID] = name
		}
		s.User = name
	}
	return out, nil
}

func familyName(p policy.Protocol, family uint8) string {
	if family == unix.AF_INET6 {
		return string(p) + "6"
	}
	return string(p) + "4"
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
