package policy

import (
	"fmt"
	"net/netip"
)

// Protocol is a transport protocol a reservation covers.
type Protocol string

const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Number is the IANA protocol number, as nftables' meta l4proto sees it.
func (p Protocol) Number() uint8 {
	if p == TCP {
		return 6
	}
	return 17
}

// PortRange is an inclusive range of ports, Lo <= Hi, both in 1..65535.
// A single port has Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return fmt.Sprint(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// IDRange is an inclusive range of uids or gids, Lo <= Hi.
type IDRange struct{ Lo, Hi uint32 }

func (r IDRange) String() string {
	if r.Lo == r.Hi {
		return fmt.Sprint(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// Pos is a place in a policy file. The zero Pos means "no place" (for
// entries portfw makes itself, such as the root-only guard).
type Pos struct {
	File      string
	Line, Col int
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col) }

// Resolved is a policy with every name turned into a number. It is a value:
// the compiler turns it into a ruleset without looking at the host.
//
// Invariants (established by Resolve, relied on by the compiler):
//   - Reservations are sorted by Name and names are unique.
//   - In each reservation Protocols, Ports, UIDs, GIDs and Addresses are
//     sorted and deduplicated; overlapping ranges are merged but ranges that
//     only touch are not, so values listed one by one stay exact (the
//     compiler keeps exact values in hash sets); no address prefix contains
//     another; Protocols and Ports are non-empty; UIDs and GIDs are not both
//     empty.
//   - No two reservations share a (protocol, port, address): every packet on
//     a reserved port belongs to exactly one reservation.
type Resolved struct {
	Settings     Settings
	Reservations []Reservation
	// Guard reserves for uid 0 alone the ports that lowering
	// net.ipv4.ip_unprivileged_port_start opens and that no reservation
	// holds for every address, so a lowered threshold opens nothing to
	// anyone else. At most one entry per protocol, named GuardName, owned
	// by uid 0. It is filled from the host's sysctls (package tune), never
	// from the policy file. A guard port may also be in an address-scoped
	// reservation: the scoped owner passes on its addresses through the
	// scoped owner set, and only root anywhere else.
	Guard []Reservation
}

// GuardName is the reservation name of the root-only guard entries. It
// cannot collide with a policy's names, which start with a letter.
const GuardName = "_guard"

// Settings are the policy-wide settings, with defaults filled in.
type Settings struct {
	Table     string // nftables table name, family inet
	AllowRoot bool   // uid 0 owns every reserved port too
	// UnprivilegedPortStart is "auto", "keep", or a number 0..1024 as text.
	UnprivilegedPortStart string
	// LogRate is the kernel log rate for drops as nft writes it
	// ("10/minute"); empty means no log.
	LogRate string
	// MarkOwned and MarkSquatted are the conntrack mark bits portfw uses;
	// all other bits of the ct mark are left alone. Each is one bit.
	MarkOwned, MarkSquatted uint32
	// BindGuard says whether an eBPF bind guard (package bindguard) also
	// refuses bind() on reserved ports to other uids.
	BindGuard BindGuardMode
}

// BindGuardMode is settings.bind_guard. The zero value, off, is the
// default.
type BindGuardMode uint8

const (
	BindGuardOff BindGuardMode = iota
	BindGuardOn
	// BindGuardAuto runs the guard where the kernel supports it and relies
	// on nftables alone elsewhere.
	BindGuardAuto
)

func (m BindGuardMode) String() string {
	switch m {
	case BindGuardOff:
		return "off"
	case BindGuardOn:
		return "on"
	case BindGuardAuto:
		return "auto"
	}
	return fmt.Sprintf("BindGuardMode(%d)", uint8(m))
}

// Reservation is one resolved reservation.
type Reservation struct {
	Name        string
	Description string
	Protocols   []Protocol
	Ports       []PortRange
	UIDs        []IDRange
	GIDs        []IDRange
	// Addresses limits the reservation to these local addresses; empty
	// means every address. Single addresses are /32 or /128 prefixes.
	Addresses []netip.Prefix
	Pos       Pos // where the reservation starts in the policy file
}
