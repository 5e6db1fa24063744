package model

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"unsafe"
)

// Resolved is a policy with every name turned into a number: the ownership
// model. It is a value; consumers map it without looking at the host.
//
// Invariants (established by resolve, relied on by every consumer):
//   - Reservations are sorted by Name and names are unique.
//   - In each reservation Protocols, Ports and Addresses are sorted and
//     deduplicated; overlapping port ranges are merged but ranges that only
//     touch are not, so values listed one by one stay exact; no address
//     prefix contains another; Protocols and Ports are non-empty; Owners
//     are canonical (see Owners).
//   - No two reservations share a (protocol, port, address): every packet
//     on a reserved port belongs to exactly one reservation.
type Resolved struct {
	Settings     Settings
	Reservations []Reservation
	// Guard reserves for root alone the ports that lowering
	// net.ipv4.ip_unprivileged_port_start opens and that no reservation
	// holds for every address, so a lowered threshold opens nothing to
	// anyone else. At most one entry per protocol, named GuardName, owned by
	// Root alone. It is planned from the host's sysctls (package tune),
	// never read from the policy file. A guard port may also be in an
	// address-scoped reservation: the scoped owner passes on its addresses,
	// only root anywhere else.
	Guard []Reservation
	// Warnings are what resolving found on the host that works against
	// the policy without making it invalid (an owner range that other
	// users' subordinate ids overlap).
	Warnings []string
}

// GuardName is the reservation name of the root-only guard entries. It
// cannot collide with a policy's names, which start with a letter.
const GuardName = "_guard"

// All returns the reservations and then the guard entries.
func (r *Resolved) All() []*Reservation {
	out := make([]*Reservation, 0, len(r.Reservations)+len(r.Guard))
	for i := range r.Reservations {
		out = append(out, &r.Reservations[i])
	}
	for i := range r.Guard {
		out = append(out, &r.Guard[i])
	}
	return out
}

// Reservation is one resolved reservation.
type Reservation struct {
	Name        string
	Description string
	Protocols   []Protocol
	Ports       []PortRange
	// Addresses limits the reservation to these local addresses; empty
	// means every address. Single addresses are /32 or /128 prefixes;
	// IPv4-mapped IPv6 addresses are stored as IPv4.
	Addresses []netip.Prefix
	Owners    Owners
	Pos       Pos // where the reservation starts in the policy file
}

// Covers reports whether the reservation holds (proto, port) on some
// address.
func (r *Reservation) Covers(proto Protocol, port uint16) bool {
	if !slices.Contains(r.Protocols, proto) {
		return false
	}
	for _, p := range r.Ports {
		if p.Contains(port) {
			return true
		}
	}
	return false
}

// Owners is who owns a reservation's ports. A socket or a bind is an
// owner's when any part matches: it is root's and Root is set, or its uid
// is in UIDs, or its gid in GIDs, or it was made by a process in one of
// Cgroups or below it.
//
// Canonical Owners (as resolve makes them): UIDs and GIDs are sorted with
// overlapping ranges merged (touching ones stay apart, see ExactIDs);
// Cgroups are sorted by CompareCgroups and unique; at least one part is
// non-empty. Root comes from settings.allow_root, so every consumer sees
// root's ownership in one place.
type Owners struct {
	Root    bool
	UIDs    []IDRange
	GIDs    []IDRange
	Cgroups []Cgroup
}

// UnitTypes are the systemd unit types that have a cgroup of their own, in
// which processes run and make sockets: what owner.units may name, what the
// tree walk and the audit take for a unit, and what systemd's D-Bus API
// holds a ControlGroup for.
var UnitTypes = []string{"service", "socket", "scope", "slice", "mount", "swap"}

// UnitType is the type of a unit name ("service" of "nginx.service"), or
// "" when the name ends in no unit type.
func UnitType(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || !slices.Contains(UnitTypes, name[i+1:]) {
		return ""
	}
	return name[i+1:]
}

// SliceTree reports whether a cgroup path is the root or a slice less than
// MaxCgroupLevel deep: the cgroups systemd makes units' cgroups in, which
// the tree walk and the daemon descend (never a service or scope, below
// which a container's or a user's own manager runs units of its own).
func SliceTree(path string) bool {
	if path == "/" {
		return true
	}
	return UnitType(path[strings.LastIndexByte(path, '/')+1:]) == "slice" && strings.Count(path, "/") < MaxCgroupLevel
}

// MaxCgroupLevel is the deepest cgroup an owner may name: the rules and the
// bind guard hold one lookup per level, so the levels are bounded.
const MaxCgroupLevel = 8

// Cgroup is a cgroup v2 directory whose sockets own: those made by a
// process in it or in a cgroup below it. An owner that names a systemd unit
// or a cgroup that does not exist now (a unit not running) is kept as a
// waiting Cgroup, ID 0: it owns nothing until the cgroup appears.
type Cgroup struct {
	// Source is what the policy names: a unit ("nginx.service", or the
	// unit a pattern matched) or a cgroup path.
	Source string
	// Unit is true when Source is a systemd unit.
	Unit bool
	// Path is the cgroup's path from the root of the cgroup v2 hierarchy,
	// "/system.slice/nginx.service"; "" while a unit is waiting.
	Path string
	// Level is the cgroup's depth below the root (1 for "/system.slice"),
	// what nftables' `socket cgroupv2 level N` and the guard's ancestor
	// lookup compare at. 0 while a unit is waiting.
	Level uint8
	// ID is the kernel's cgroup id (the directory's inode number); 0 while
	// waiting.
	ID uint64
}

// Waiting reports whether the cgroup does not exist now.
func (c Cgroup) Waiting() bool { return c.ID == 0 }

// CompareCgroups orders cgroups: waiting ones first, then by level and id,
// then by what names them.
func CompareCgroups(a, b Cgroup) int {
	return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.ID, b.ID),
		strings.Compare(a.Path, b.Path), strings.Compare(a.Source, b.Source), compareBool(a.Unit, b.Unit))
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// Live are the cgroups that exist now: those that own sockets.
func (o Owners) Live() []Cgroup {
	var out []Cgroup
	for _, c := range o.Cgroups {
		if !c.Waiting() {
			out = append(out, c)
		}
	}
	return out
}

// Waiting names the units and cgroups that own but do not exist now.
func (o Owners) Waiting() []string {
	var out []string
	for _, c := range o.Cgroups {
		if c.Waiting() {
			out = append(out, c.Source)
		}
	}
	return out
}

// CgroupOnly reports whether only cgroups own (root aside): then the
// kernel's socket lookup on input, which sees a socket's cgroup but not its
// uid, decides exactly who receives.
func (o Owners) CgroupOnly() bool {
	return len(o.Cgroups) > 0 && len(o.UIDs) == 0 && len(o.GIDs) == 0
}

// HasUID reports whether a socket or task with this uid is an owner.
func (o Owners) HasUID(uid uint32) bool {
	return (o.Root && uid == 0) || ContainsID(o.UIDs, uid)
}

// HasGID reports whether a socket or task with this gid is an owner.
func (o Owners) HasGID(gid uint32) bool { return ContainsID(o.GIDs, gid) }

// NonRoot reports whether someone other than root owns the ports.
func (o Owners) NonRoot() bool {
	for _, u := range o.UIDs {
		if u.Hi > 0 {
			return true
		}
	}
	return len(o.GIDs) > 0 || len(o.Cgroups) > 0
}

// Equal reports whether two owner sets own the same sockets.
func (o Owners) Equal(p Owners) bool {
	a, b := o.allUIDs(), p.allUIDs()
	return slices.Equal(a, b) && slices.Equal(MergeIDs(o.GIDs), MergeIDs(p.GIDs)) && Equal(o.Cgroups, p.Cgroups)
}

// allUIDs is UIDs with root folded in, merged.
func (o Owners) allUIDs() []IDRange {
	if !o.Root {
		return MergeIDs(o.UIDs) // a copy already
	}
	return MergeIDs(append(slices.Clone(o.UIDs), ID(0)))
}

// UIDSet is every uid that owns, root included, merged: the form the bind
// guard looks up.
func (o Owners) UIDSet() []IDRange { return o.allUIDs() }

// Equal is slices.Equal that knows a slice equals itself at once: policies
// loaded one after another share the lists of unchanged reservations, and
// comparing 10k of them element by element is what a reload must not do.
func Equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b) {
		return true
	}
	return slices.Equal(a, b)
}

// SameGeometry reports whether two reservations hold the same protocols,
// ports and addresses.
func SameGeometry(a, b *Reservation) bool {
	return Equal(a.Protocols, b.Protocols) && Equal(a.Ports, b.Ports) && Equal(a.Addresses, b.Addresses)
}
