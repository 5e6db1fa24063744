// Package tune plans the sysctls portfw manages in a network namespace:
// net.ipv4.ip_unprivileged_port_start (lowered only where that opens
// nothing to anyone) and net.ipv4.ip_local_reserved_ports (reserved ports
// are never handed out as ephemeral ports). It also says what of the host's
// other settings matters to the policy (syncookies, TCP Fast Open).
//
// Compute is pure: the policy, the host's values and the recorded state in,
// a Plan out. Package engine carries a plan out in the only safe order.
package tune

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/model"
)

// Sysctl names.
const (
	UnprivPortStart = "net.ipv4.ip_unprivileged_port_start"
	LocalPortRange  = "net.ipv4.ip_local_port_range"
	ReservedPorts   = "net.ipv4.ip_local_reserved_ports"
	Syncookies      = "net.ipv4.tcp_syncookies"
	Fastopen        = "net.ipv4.tcp_fastopen"
)

// MinEphemeral is the fewest ephemeral ports a policy may leave free: with
// none, every outgoing connection in the namespace fails, root's too.
const MinEphemeral = 1024

// Host is the sysctl state of one network namespace.
type Host struct {
	UnprivPortStart int
	LocalPortRange  model.PortRange
	ReservedPorts   model.Ports
	Syncookies      int
	Fastopen        int
	// ReadOnly is why the sysctls cannot be written (a container's
	// read-only /proc/sys); nil when they can.
	ReadOnly error
}

// ReadHost reads the sysctls portfw looks at.
func ReadHost(s sysctl.Sysctls) (Host, error) {
	var h Host
	num := func(name string, dst *int) error {
		v, err := s.Get(name)
		if err != nil {
			return err
		}
		if *dst, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("read %s: %q is not a number", name, v)
		}
		return nil
	}
	if err := num(UnprivPortStart, &h.UnprivPortStart); err != nil {
		return h, err
	}
	v, err := s.Get(LocalPortRange)
	if err != nil {
		return h, err
	}
	f := strings.Fields(v)
	lo, err1 := strconv.ParseUint(f0(f, 0), 10, 16)
	hi, err2 := strconv.ParseUint(f0(f, 1), 10, 16)
	if len(f) != 2 || err1 != nil || err2 != nil || lo > hi {
		return h, fmt.Errorf("read %s: %q is not a port range", LocalPortRange, v)
	}
	h.LocalPortRange = model.PortRange{Lo: uint16(lo), Hi: uint16(hi)}
	if v, err = s.Get(ReservedPorts); err != nil {
		return h, err
	}
	if h.ReservedPorts, err = model.ParsePorts(v); err != nil {
		return h, fmt.Errorf("read %s: %w", ReservedPorts, err)
	}
	// Informational: a kernel without them is not an error.
	_ = num(Syncookies, &h.Syncookies)
	_ = num(Fastopen, &h.Fastopen)
	if err := s.Writable(UnprivPortStart); err != nil {
		h.ReadOnly = err
	}
	return h, nil
}

func f0(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

// Plan is what applying a policy does to the sysctls of a namespace.
type Plan struct {
	Original  int // the threshold before portfw changed it
	Current   int // the threshold now
	Threshold int // the threshold after apply
	// Guard is the root-only guard (see model.Resolved.Guard).
	Guard []model.Reservation
	// ReservedPorts is the new ip_local_reserved_ports; Added is the part
	// of it that portfw adds over the admin's own entries; CurrentReserved
	// is what the kernel holds now.
	ReservedPorts, Added, CurrentReserved model.Ports
	// Notes say what portfw decided and why (auto left the threshold
	// alone); Warnings what in the host works against the policy.
	Notes, Warnings []string
}

// Changes lists the sysctl writes the plan makes, as "name: old -> new".
func (p Plan) Changes() []string {
	var out []string
	if p.Threshold != p.Current {
		out = append(out, fmt.Sprintf("%s: %d -> %d", UnprivPortStart, p.Current, p.Threshold))
	}
	if cur, next := p.CurrentReserved.String(), p.ReservedPorts.String(); cur != next {
		out = append(out, fmt.Sprintf("%s: %q -> %q", ReservedPorts, cur, next))
	}
	return out
}

// ErrEphemeral is wrapped by Compute's error for a policy that would leave
// the namespace (almost) no ephemeral ports.
var ErrEphemeral = errors.New("too few ephemeral ports left")

// Compute plans the sysctls for a policy. guard says whether the bind guard
// runs. It fails for a policy that starves the ephemeral range and for a
// threshold it cannot set.
func Compute(r *model.Resolved, h Host, st state.State, guard bool) (Plan, error) {
	p := Plan{Original: h.UnprivPortStart, Current: h.UnprivPortStart, CurrentReserved: h.ReservedPorts}
	if st.UnprivPortStartOriginal != nil {
		p.Original = *st.UnprivPortStartOriginal
	}
	p.Threshold = p.Original
	switch ps := r.Settings.PortStart; ps.Mode {
	case model.PortStartKeep:
		// portfw does not manage the threshold: it undoes its own earlier
		// change, if any, since no guard will cover a lowered one.
	case model.PortStartAuto:
		p.Notes = append(p.Notes, autoNote(r, p.Original, guard)...)
	case model.PortStartFixed:
		p.Threshold = int(ps.Value)
	}
	if p.Threshold < p.Original {
		p.Guard = rootGuard(r, p.Threshold, p.Original)
		if !guard {
			p.Warnings = append(p.Warnings, fmt.Sprintf("unprivileged_port_start: %d without the bind guard lets any user bind ports %d-%d: "+
				"the rules keep them useless for TCP, but a squatter on a UDP one reads every datagram sent to it as long as it never replies "+
				"(and the first of each flow if it does; UDP-Lite: all); use the bind guard instead (bind_guard: auto) where the kernel supports it",
				p.Threshold, p.Threshold, p.Original-1))
		}
	}
	if h.ReadOnly != nil && p.Threshold != p.Current {
		return p, fmt.Errorf("cannot set %s to %d: %w", UnprivPortStart, p.Threshold, h.ReadOnly)
	}
	var err error
	p.ReservedPorts, p.Added, err = reservedPorts(r, h, st)
	if err != nil {
		return p, err
	}
	if h.ReadOnly != nil && p.ReservedPorts.String() != p.CurrentReserved.String() {
		p.Warnings = append(p.Warnings, fmt.Sprintf("cannot reserve ports %s in the ephemeral range (%v): the kernel may pick them as the "+
			"local port of an outgoing connection, whose traffic portfw would then drop", p.Added, h.ReadOnly))
		p.ReservedPorts, p.Added = p.CurrentReserved, nil
	}
	p.Warnings = append(p.Warnings, hostWarnings(r, h)...)
	return p, nil
}

// autoNote explains what auto did for owners of low ports.
func autoNote(r *model.Resolved, threshold int, guard bool) []string {
	var low []string
	lowest := threshold
	for _, res := range r.Reservations {
		if len(res.Addresses) > 0 || !res.Owners.NonRoot() || int(res.Ports[0].Lo) >= threshold {
			continue
		}
		low = append(low, res.Name)
		lowest = min(lowest, int(res.Ports[0].Lo))
	}
	if len(low) == 0 {
		return nil
	}
	names := strings.Join(low, ", ")
	if guard {
		return []string{fmt.Sprintf("%s stays %d: the bind guard lets the owners of %s bind their ports below it, and nobody else",
			UnprivPortStart, threshold, names)}
	}
	return []string{fmt.Sprintf("%s stays %d: without the bind guard, lowering it would make every low UDP port readable by any user; "+
		"the owners of %s need root or CAP_NET_BIND_SERVICE for their ports below it. Use the bind guard (bind_guard: auto, "+
		"on a kernel with cgroup v2 BPF), or set unprivileged_port_start: %d and accept that",
		UnprivPortStart, threshold, names, lowest)}
}

// rootGuard is [lo, hi) less the ports reserved on every address, for every
// protocol, owned by root alone.
func rootGuard(r *model.Resolved, lo, hi int) []model.Reservation {
	start := max(lo, 1) // port 0 is not a port
	if start > hi-1 {
		return nil
	}
	var out []model.Reservation
	for _, pi := range model.Protocols() {
		free := model.NewPorts(model.PortRange{Lo: uint16(start), Hi: uint16(hi - 1)})
		for _, res := range r.Reservations {
			if len(res.Addresses) > 0 || !slices.Contains(res.Protocols, pi.Protocol) {
				continue
			}
			free = free.Minus(model.NewPorts(res.Ports...))
		}
		if len(free) > 0 {
			out = append(out, model.Reservation{
				Name: model.GuardName, Description: "ports opened by lowering ip_unprivileged_port_start stay root-only",
				Protocols: []model.Protocol{pi.Protocol}, Ports: free, Owners: model.Owners{Root: true},
			})
		}
	}
	return out
}

// reservedPorts merges the reserved ports inside the ephemeral range into
// the admin's own ip_local_reserved_ports. The admin's part is what is there
// now less what portfw added before, so entries the admin made since stay.
// A policy that would leave fewer than MinEphemeral ports free (and fewer
// than were free before) is refused, naming the reservations that take the
// most.
func reservedPorts(r *model.Resolved, h Host, st state.State) (all, added model.Ports, err error) {
	base := h.ReservedPorts.Minus(st.ReservedPortsAdded)
	rng := model.NewPorts(h.LocalPortRange)
	type use struct {
		name string
		pos  model.Pos
		n    int
	}
	var inRange []model.PortRange
	var uses []use
	lo, hi := h.LocalPortRange.Lo, h.LocalPortRange.Hi
	for _, res := range r.Reservations {
		n := 0
		for _, p := range res.Ports {
			if p.Hi < lo || p.Lo > hi {
				continue // most reservations: nothing to allocate
			}
			in := model.PortRange{Lo: max(p.Lo, lo), Hi: min(p.Hi, hi)}
			inRange = append(inRange, in)
			n += int(in.Hi) - int(in.Lo) + 1
		}
		if n > 0 {
			uses = append(uses, use{res.Name, res.Pos, n})
		}
	}
	want := model.NewPorts(inRange...)
	all = base.Union(want)
	added = want.Minus(base)
	before := rng.Count() - base.Intersect(rng).Count()
	free := rng.Count() - all.Intersect(rng).Count()
	if free < MinEphemeral && free < before {
		slices.SortFunc(uses, func(a, b use) int { return cmp.Or(-cmp.Compare(a.n, b.n), cmp.Compare(a.name, b.name)) })
		var names []string
		for i, u := range uses {
			if i == 5 {
				names = append(names, fmt.Sprintf("and %d more", len(uses)-5))
				break
			}
			at := ""
			if u.pos.File != "" {
				at = " at " + u.pos.String()
			}
			names = append(names, fmt.Sprintf("%s%s (%d ports)", u.name, at, u.n))
		}
		return nil, nil, fmt.Errorf("%w: the policy reserves ports in the ephemeral range %s (%s) and would leave %d of its %d ports "+
			"for outgoing connections, fewer than %d; every outgoing connection in the namespace would fail, root's too. Reserved there: %s. "+
			"Move the reservations out of the range or widen %s", ErrEphemeral, h.LocalPortRange, LocalPortRange, free, rng.Count(),
			MinEphemeral, strings.Join(names, ", "), LocalPortRange)
	}
	return all, added, nil
}

// hostWarnings are what in the namespace's settings works against the
// policy.
func hostWarnings(r *model.Resolved, h Host) []string {
	var w []string
	tcp := false
	for _, res := range r.Reservations {
		tcp = tcp || slices.Contains(res.Protocols, model.TCP)
	}
	if tcp && h.Syncookies == 2 {
		w = append(w, Syncookies+"=2 (cookies always): reserved TCP ports never get syncookie SYN-ACKs "+
			"(a squatter could use them unattributed), so they may serve nothing; set it to 1")
	}
	// 0x2: TFO for servers with TCP_FASTOPEN; 0x400: for every listener.
	if tcp && h.Fastopen&(0x2|0x400) != 0 {
		w = append(w, fmt.Sprintf("%s=%d enables TCP Fast Open for servers: portfw drops SYNs that carry data to reserved TCP ports "+
			"(a squatter's listener would read the data before any rule sees its reply); clients then fall back to a plain "+
			"handshake after a timeout, so reserved ports get no benefit from TFO", Fastopen, h.Fastopen))
	}
	return w
}

// Ephemeral describes the reserved ports that fall inside the ephemeral
// range, per reservation, for check to explain.
func Ephemeral(r *model.Resolved, h Host) []string {
	var out []string
	rng := model.NewPorts(h.LocalPortRange)
	for _, res := range r.Reservations {
		if in := model.NewPorts(res.Ports...).Intersect(rng); len(in) > 0 {
			out = append(out, fmt.Sprintf("reservation %q: ports %s are in the ephemeral range %s (%s); apply adds them to %s "+
				"so the kernel never picks them as the local port of an outgoing connection (whose traffic portfw would drop)",
				res.Name, in, h.LocalPortRange, LocalPortRange, ReservedPorts))
		}
	}
	return out
}
