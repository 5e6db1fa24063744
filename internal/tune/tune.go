// Package tune manages the two sysctls portfw changes in a network
// namespace: net.ipv4.ip_unprivileged_port_start, lowered so assigned
// non-root owners can bind their low ports, and
// net.ipv4.ip_local_reserved_ports, so reserved ports are never handed out
// as ephemeral ports.
//
// Compute is pure: the host's values, the recorded state and the policy in,
// a Plan out. Apply and Remove carry a plan out in the only safe order,
// recording the values found before portfw changed them in a state file
// first, so `portfw remove` can restore them even after a crash.
package tune

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/portfw/portfw/policy"
)

// Sysctl names.
const (
	UnprivPortStart = "net.ipv4.ip_unprivileged_port_start"
	LocalPortRange  = "net.ipv4.ip_local_port_range"
	ReservedPorts   = "net.ipv4.ip_local_reserved_ports"
	Syncookies      = "net.ipv4.tcp_syncookies"
)

// Host is the sysctl state of one network namespace.
type Host struct {
	// BindGuard is set when the eBPF bind guard is on: it grants owners
	// their low ports itself, so auto leaves the threshold alone.
	BindGuard       bool
	UnprivPortStart int
	LocalPortRange  policy.PortRange
	ReservedPorts   []policy.PortRange // merged
}

// State is what portfw changed in a namespace, recorded before changing it.
type State struct {
	Table string `json:"table"`
	// UnprivPortStartOriginal is the threshold found before portfw first
	// lowered it; nil while portfw has not changed it.
	UnprivPortStartOriginal *int `json:"unprivileged_port_start_original,omitempty"`
	// ReservedPortsAdded are the ports portfw added to
	// ip_local_reserved_ports; the admin's own entries are never in it.
	ReservedPortsAdded PortList `json:"ip_local_reserved_ports_added,omitempty"`
}

// PortList is a list of port ranges kept in the kernel's text format
// ("8080,30000-30999"), in the state file too.
type PortList []policy.PortRange

func (l PortList) MarshalText() ([]byte, error) { return []byte(FormatPorts(l)), nil }

func (l *PortList) UnmarshalText(b []byte) error {
	rs, err := ParsePorts(string(b))
	*l = rs
	return err
}

// Plan is what applying a policy does to the sysctls of a namespace.
type Plan struct {
	Original  int // the threshold before portfw changed it
	Current   int // the threshold now
	Threshold int // the threshold after apply
	// Guard is the root-only guard (see policy.Resolved.Guard).
	Guard []policy.Reservation
	// ReservedPorts is the new ip_local_reserved_ports; Added is the part
	// of it that portfw adds over the admin's own entries; CurrentReserved
	// is what the kernel holds now.
	ReservedPorts, Added, CurrentReserved []policy.PortRange
}

// Changes lists the sysctl writes the plan makes, as "name: old -> new".
func (p Plan) Changes() []string {
	var out []string
	if p.Threshold != p.Current {
		out = append(out, fmt.Sprintf("%s: %d -> %d", UnprivPortStart, p.Current, p.Threshold))
	}
	if cur, next := FormatPorts(p.CurrentReserved), FormatPorts(p.ReservedPorts); cur != next {
		out = append(out, fmt.Sprintf("%s: %q -> %q", ReservedPorts, cur, next))
	}
	return out
}

// Compute plans the sysctls for a policy. It fails only for a threshold
// the policy cannot have safely (see below).
func Compute(r *policy.Resolved, h Host, st State) (Plan, error) {
	p := Plan{Original: h.UnprivPortStart, Current: h.UnprivPortStart}
	if st.UnprivPortStartOriginal != nil {
		p.Original = *st.UnprivPortStartOriginal
	}
	p.Threshold = p.Original
	switch v := r.Settings.UnprivilegedPortStart; v {
	case "keep":
		// portfw does not manage the threshold: it undoes its own earlier
		// change, if any, since no guard will cover a lowered one.
	case "auto", "":
		if h.BindGuard {
			break // the threshold goes back to (or stays at) its original
		}
		for _, res := range r.Reservations {
			if len(res.Addresses) > 0 || !hasNonRootOwner(res) {
				continue
			}
			if lo := int(res.Ports[0].Lo); lo < p.Threshold && lo < 1024 {
				p.Threshold = lo
			}
		}
	default:
		n, err := strconv.Atoi(v)
		if err != nil {
			return p, fmt.Errorf("unprivileged_port_start %q is not auto, keep or a number", v)
		}
		p.Threshold = n
	}
	if p.Threshold < p.Original {
		p.Guard = guard(r, p.Threshold, p.Original)
	}
	p.ReservedPorts, p.Added = reservedPorts(r, h, st)
	p.CurrentReserved = h.ReservedPorts
	return p, nil
}

func hasNonRootOwner(res policy.Reservation) bool {
	for _, u := range res.UIDs {
		if u.Hi > 0 {
			return true
		}
	}
	return len(res.GIDs) > 0
}

// guard is [lo, hi) less the ports reserved on every address, per protocol.
func guard(r *policy.Resolved, lo, hi int) []policy.Reservation {
	var out []policy.Reservation
	for _, proto := range []policy.Protocol{policy.TCP, policy.UDP} {
		start := max(lo, 1) // port 0 is not a port
		if start > hi-1 {
			return nil
		}
		free := []policy.PortRange{{Lo: uint16(start), Hi: uint16(hi - 1)}}
		for _, res := range r.Reservations {
			if len(res.Addresses) > 0 || !slices.Contains(res.Protocols, proto) {
				continue
			}
			free = subtract(free, res.Ports)
		}
		if len(free) > 0 {
			out = append(out, policy.Reservation{
				Name: policy.GuardName, Description: "ports opened by lowering ip_unprivileged_port_start stay root-only",
				Protocols: []policy.Protocol{proto}, Ports: free, UIDs: []policy.IDRange{{Lo: 0, Hi: 0}},
			})
		}
	}
	return out
}

// reservedPorts merges the reserved ports inside the ephemeral range into
// the admin's own ip_local_reserved_ports. The admin's part is what is there
// now less what portfw added before, so entries the admin made since stay.
func reservedPorts(r *policy.Resolved, h Host, st State) (all, added []policy.PortRange) {
	base := subtract(h.ReservedPorts, st.ReservedPortsAdded)
	var want []policy.PortRange
	for _, res := range r.Reservations {
		for _, pr := range res.Ports {
			lo, hi := max(pr.Lo, h.LocalPortRange.Lo), min(pr.Hi, h.LocalPortRange.Hi)
			if lo <= hi {
				want = append(want, policy.PortRange{Lo: lo, Hi: hi})
			}
		}
	}
	want = Merge(want)
	return Merge(append(slices.Clone(base), want...)), subtract(want, base)
}

// Merge sorts ranges and merges overlapping or adjacent ones.
func Merge(rs []policy.PortRange) []policy.PortRange {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b policy.PortRange) int { return int(a.Lo) - int(b.Lo) })
	var out []policy.PortRange
	for _, r := range rs {
		if n := len(out); n > 0 && int(r.Lo) <= int(out[n-1].Hi)+1 {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract returns the ports of a that are in no range of b, merged.
func subtract(a, b []policy.PortRange) []policy.PortRange {
	var out []policy.PortRange
	b = Merge(b)
	for _, r := range Merge(a) {
		lo := int(r.Lo)
		for _, x := range b {
			if int(x.Hi) < lo || int(x.Lo) > int(r.Hi) {
				continue
			}
			if int(x.Lo) > lo {
				out = append(out, policy.PortRange{Lo: uint16(lo), Hi: x.Lo - 1})
			}
			lo = int(x.Hi) + 1
		}
		if lo <= int(r.Hi) {
			out = append(out, policy.PortRange{Lo: uint16(lo), Hi: r.Hi})
		}
	}
	return out
}

// FormatPorts writes ranges in the kernel's ip_local_reserved_ports
// format: "8080,30000-30999".
func FormatPorts(rs []policy.PortRange) string {
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ","
		}
		s += r.String()
	}
	return s
}
