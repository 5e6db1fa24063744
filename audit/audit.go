// Package audit finds the sockets bound to reserved ports and says, for
// each, whether portfw's datapath treats it as an owner or a squatter.
//
// It is split like the rest of portfw: Classify is pure (a resolved policy
// and a list of sockets in, a Report out) and applies exactly the owner
// rules the compiled ruleset applies; Sockets is the only part that reads
// the host (sock_diag over netlink, /proc for the processes holding each
// socket, and the cgroup v2 tree, through ReadCgroups, for the path and
// systemd unit of the cgroup each socket was made in). Tracker turns
// successive reports into "new squatter" events for the watch daemon.
package audit

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"

	"github.com/portfw/portfw/model"
)

// Verdict is what the datapath does to a socket's traffic for one
// reservation.
type Verdict string

const (
	// Owner: the socket's traffic on the reservation's ports passes.
	Owner Verdict = "owner"
	// Squatter: the socket's traffic on the reservation's ports is dropped.
	Squatter Verdict = "squatter"
)

// Socket is a TCP listener or a bound UDP socket.
type Socket struct {
	Protocol model.Protocol
	// Addr is the local address; 0.0.0.0 or :: when the socket is bound to
	// every address of its family.
	Addr netip.Addr
	Port uint16
	// UID is the socket's owner as sock_diag reports it: the fsuid of the
	// process that created it, which is what `meta skuid` matches.
	UID   uint32
	User  string // the name of UID, empty when it has none
	Inode uint64 // the socket's inode, unique while the socket lives
	// Processes hold the socket open (a forked server shares it between
	// several), sorted by pid; empty when none was found (another user's
	// process without root, or a socket owned by the kernel).
	Processes []Process
	// Cgroup is the id of the cgroup v2 the socket was made in (the
	// creating process's when it made it, INET_DIAG_CGROUP_ID), what the
	// rules' `socket cgroupv2` matches; 0 when the kernel does not say.
	Cgroup uint64
	// CgroupPath is that cgroup's path from the root of the hierarchy,
	// "/system.slice/nginx.service"; "" when it is unknown (removed since).
	CgroupPath string
	// Unit is the systemd unit of CgroupPath (see UnitOf); "" when none.
	Unit string
	// CgroupAncestry are the ids of the socket's cgroup and of every
	// cgroup above it, topmost first (Cgroups.Ancestry): an owner cgroup
	// owns the socket when it is one of them. Empty when the cgroup is
	// unknown.
	CgroupAncestry []uint64
}

// Process is a process holding a socket.
type Process struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
	// FSGID is the process's filesystem gid, the gid a socket it creates
	// carries (`meta skgid`). sock_diag does not report a socket's gid, so
	// the holder's is the best available stand-in for the creator's.
	FSGID uint32 `json:"-"`
}

// Finding is one socket on the ports of one reservation. A socket bound to
// every address can be in several findings: one for each address-scoped
// reservation of its port, since it would receive their traffic, and one
// for the reservation holding the port on every address.
type Finding struct {
	Reservation string         `json:"reservation"`
	Protocol    model.Protocol `json:"protocol"`
	Address     netip.Addr     `json:"address"`
	Port        uint16         `json:"port"`
	UID         uint32         `json:"uid"`
	User        string         `json:"user"`
	Processes   []Process      `json:"processes"`
	Verdict     Verdict        `json:"verdict"`
	Inode       uint64         `json:"-"`
	// CgroupID, CgroupPath and Unit are the socket's (see Socket): 0 and
	// "" when unknown.
	CgroupID   uint64 `json:"cgroup_id"`
	CgroupPath string `json:"cgroup"`
	Unit       string `json:"unit"`
}

// Free lists the ports of a reservation, for one protocol, that no socket
// is bound to.
type Free struct {
	Reservation string         `json:"reservation"`
	Protocol    model.Protocol `json:"protocol"`
	Ports       []string       `json:"ports"` // "80", "30000-30999"
}

// Report is the result of an audit.
type Report struct {
	// Findings are sorted squatters first, then by reservation, protocol,
	// port, address and uid.
	Findings []Finding
	// Free is sorted by reservation and protocol.
	Free []Free
}

// Squatters counts the squatter findings.
func (r Report) Squatters() int {
	n := 0
	for _, f := range r.Findings {
		if f.Verdict == Squatter {
			n++
		}
	}
	return n
}

// Classify matches sockets to the reservations of r (including the
// root-only guard entries) and decides owner or squatter for each by the
// rules the compiled ruleset applies:
//
//   - a socket belongs to a reservation when the protocol and port are
//     reserved and, for an address-scoped reservation, its address is in
//     one of the reservation's prefixes or it is bound to every address of
//     a family the reservation covers (it would get that traffic; a ::
//     socket gets IPv4 traffic too);
//   - it is an owner when its uid is an owner's (root's when the model
//     says root owns it), or its gid is an owner gid, or it was made in a
//     live owner cgroup or below one (the owner's id is the socket's
//     Cgroup or in its CgroupAncestry: annotate sockets with Cgroups
//     first; Sockets does). The kernel looks every
//     owner set up for a packet, so a packet to a scoped address of a port
//     that is also reserved on every address (a guard port) passes for the
//     owners of both.
//
// Sockets on ports reserved for none of their addresses are left out.
func Classify(r *model.Resolved, socks []Socket) Report {
	all := r.All()

	rep := Report{Findings: []Finding{}, Free: []Free{}}
	// bound[reservation][protocol] are the ports some socket is on.
	bound := map[string]map[model.Protocol][]uint16{}
	for _, s := range socks {
		var global, scoped []*model.Reservation
		for _, res := range all {
			if !res.Covers(s.Protocol, s.Port) {
				continue
			}
			if len(res.Addresses) == 0 {
				global = append(global, res)
			} else if receivesFor(s.Addr, res.Addresses) {
				scoped = append(scoped, res)
			}
		}
		add := func(res *model.Reservation, owners []*model.Reservation) {
			v := Squatter
			if isOwner(s, owners) {
				v = Owner
			}
			procs := s.Processes
			if procs == nil {
				procs = []Process{}
			}
			rep.Findings = append(rep.Findings, Finding{
				Reservation: res.Name, Protocol: s.Protocol, Address: s.Addr, Port: s.Port,
				UID: s.UID, User: s.User, Processes: procs, Verdict: v, Inode: s.Inode,
				CgroupID: s.Cgroup, CgroupPath: s.CgroupPath, Unit: s.Unit,
			})
			if bound[res.Name] == nil {
				bound[res.Name] = map[model.Protocol][]uint16{}
			}
			bound[res.Name][s.Protocol] = append(bound[res.Name][s.Protocol], s.Port)
		}
		// Packets to a scoped address pass for the owners of the scoped
		// reservation and of any reservation holding the port everywhere.
		for _, res := range scoped {
			add(res, append([]*model.Reservation{res}, global...))
		}
		// A socket on one address that a scoped reservation covers gets no
		// other traffic; a wildcard socket also gets traffic for addresses
		// only the port-wide reservation covers, where only its owners pass.
		if len(scoped) > 0 && !s.Addr.Unmap().IsUnspecified() {
			continue
		}
		for _, res := range global {
			add(res, []*model.Reservation{res})
		}
	}
	slices.SortFunc(rep.Findings, func(a, b Finding) int {
		return cmp.Or(
			-cmp.Compare(a.Verdict, b.Verdict), // "squatter" > "owner"
			cmp.Compare(a.Reservation, b.Reservation),
			cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Port, b.Port),
			a.Address.Compare(b.Address),
			cmp.Compare(a.UID, b.UID),
			cmp.Compare(a.Inode, b.Inode),
		)
	})

	for _, res := range all {
		for _, proto := range res.Protocols {
			free := freePorts(res.Ports, bound[res.Name][proto])
			if len(free) == 0 {
				continue
			}
			f := Free{Reservation: res.Name, Protocol: proto}
			for _, p := range free {
				f.Ports = append(f.Ports, p.String())
			}
			rep.Free = append(rep.Free, f)
		}
	}
	slices.SortStableFunc(rep.Free, func(a, b Free) int {
		return cmp.Or(cmp.Compare(a.Reservation, b.Reservation), cmp.Compare(a.Protocol, b.Protocol))
	})
	return rep
}

// receivesFor reports whether a socket bound to addr receives traffic for
// some address in prefixes (which the policy keeps unmapped: IPv4 prefixes
// are 4-byte). A v4-mapped IPv6 address receives IPv4 traffic. A ::
// socket is taken as dual-stack: sock_diag does not say whether
// IPV6_V6ONLY is set.
func receivesFor(addr netip.Addr, prefixes []netip.Prefix) bool {
	a := addr.Unmap()
	for _, p := range prefixes {
		switch {
		case a.IsUnspecified() && a.Is4():
			if p.Addr().Is4() {
				return true
			}
		case a.IsUnspecified():
			return true
		case p.Contains(a):
			return true
		}
	}
	return false
}

// isOwner applies the table's owner rules: the socket's uid (root's
// included, as the model says), or the gid of a process holding it, or its
// cgroup: a live owner cgroup is the socket's or one above it, which is
// what `socket cgroupv2 level N` compares. Waiting owners (id 0) own
// nothing.
func isOwner(s Socket, owners []*model.Reservation) bool {
	for _, res := range owners {
		if res.Owners.HasUID(s.UID) {
			return true
		}
		for _, p := range s.Processes {
			if res.Owners.HasGID(p.FSGID) {
				return true
			}
		}
		for _, c := range res.Owners.Cgroups {
			if !c.Waiting() && (c.ID == s.Cgroup || slices.Contains(s.CgroupAncestry, c.ID)) {
				return true
			}
		}
	}
	return false
}

// freePorts is ranges less the ports in taken.
func freePorts(ranges []model.PortRange, taken []uint16) []model.PortRange {
	taken = slices.Clone(taken)
	slices.Sort(taken)
	taken = slices.Compact(taken)
	var out []model.PortRange
	for _, r := range ranges {
		lo := int(r.Lo)
		for _, t := range taken {
			if int(t) < lo || t > r.Hi {
				continue
			}
			if int(t) > lo {
				out = append(out, model.PortRange{Lo: uint16(lo), Hi: t - 1})
			}
			lo = int(t) + 1
		}
		if lo <= int(r.Hi) {
			out = append(out, model.PortRange{Lo: uint16(lo), Hi: r.Hi})
		}
	}
	return out
}

// String is "tcp 0.0.0.0:8080 uid 33 (www-data), cgroup
// /system.slice/nginx.service (unit nginx.service), reservation web, held
// by 812 nginx", for logs. The cgroup part is left out when the kernel
// reported no cgroup.
func (f Finding) String() string {
	user := ""
	if f.User != "" {
		user = " (" + f.User + ")"
	}
	s := f.Protocol.String() + " " + netip.AddrPortFrom(f.Address, f.Port).String() +
		" uid " + strconv.FormatUint(uint64(f.UID), 10) + user + f.cgroupText() + ", reservation " + f.Reservation
	for i, p := range f.Processes {
		if i == 0 {
			s += ", held by "
		} else {
			s += ", "
		}
		s += strconv.Itoa(p.PID) + " " + p.Command
	}
	return s
}

// cgroupText is ", cgroup PATH (unit UNIT)", or ", cgroup id N (removed)"
// for a cgroup that no longer exists, or "" when there is none.
func (f Finding) cgroupText() string {
	switch {
	case f.CgroupPath != "" && f.Unit != "":
		return ", cgroup " + f.CgroupPath + " (unit " + f.Unit + ")"
	case f.CgroupPath != "":
		return ", cgroup " + f.CgroupPath
	case f.CgroupID != 0:
		return ", cgroup id " + strconv.FormatUint(f.CgroupID, 10) + " (removed)"
	}
	return ""
}
