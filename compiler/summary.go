package compiler

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/portfw/portfw/model"
)

// Summary describes one reservation as a ruleset holds it: enough for
// `portfw status` to explain the kernel's table without the policy file.
type Summary struct {
	Name string
	// Ports are grouped by address (every address first) and, per
	// address, protocols with the same ports share a group.
	Ports                        []PortGroup
	UIDs, GIDs                   []model.IDRange
	DroppedPackets, DroppedBytes uint64
}

// PortGroup is the ports some protocols have in common on an address.
type PortGroup struct {
	Ports     model.Ports
	Protocols []model.Protocol
	Addr      netip.Prefix // the zero Prefix: every address
}

// String is "5060,5070-5079/tcp+udp", with "@192.0.2.10" for an address.
func (g PortGroup) String() string {
	names := make([]string, len(g.Protocols))
	for i, p := range g.Protocols {
		names[i] = p.String()
	}
	return g.Ports.String() + "/" + strings.Join(names, "+") + netip4or6{g.Addr}.text()
}

// Summarize lists the reservations in rs, sorted by name. Counters come
// from the drop sets, so they are non-zero only for a ruleset read back
// from the kernel.
func Summarize(rs *Ruleset) []Summary {
	by := map[string]*Summary{}
	get := func(name string) *Summary {
		if by[name] == nil {
			by[name] = &Summary{Name: name}
		}
		return by[name]
	}
	// ports[name][address][protocol] lists port ranges in element order.
	ports := map[string]map[netip4or6]map[model.Protocol][]model.PortRange{}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			sum := get(e.Comment)
			switch {
			case s.Counter:
				sum.DroppedPackets += e.Packets
				sum.DroppedBytes += e.Bytes
			case s.Has(FieldUID):
				sum.UIDs = appendUniq(sum.UIDs, e.ID)
			case s.Has(FieldGID):
				sum.GIDs = appendUniq(sum.GIDs, e.ID)
			default:
				if ports[sum.Name] == nil {
					ports[sum.Name] = map[netip4or6]map[model.Protocol][]model.PortRange{}
				}
				a := netip4or6{e.Addr}
				if ports[sum.Name][a] == nil {
					ports[sum.Name][a] = map[model.Protocol][]model.PortRange{}
				}
				byProto := ports[sum.Name][a]
				if !slices.Contains(byProto[e.Proto], e.Ports) {
					byProto[e.Proto] = append(byProto[e.Proto], e.Ports)
				}
			}
		}
	}
	out := make([]Summary, 0, len(by))
	for name, s := range by {
		addrs := make([]netip4or6, 0, len(ports[name]))
		for a := range ports[name] {
			addrs = append(addrs, a)
		}
		slices.SortFunc(addrs, func(a, b netip4or6) int { return comparePrefix(a.p, b.p) })
		for _, a := range addrs {
			s.Ports = append(s.Ports, portGroups(ports[name][a], a.p)...)
		}
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Summary) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// netip4or6 is an element's address as a map key; the zero prefix is
// "every address".
type netip4or6 struct{ p netip.Prefix }

func (a netip4or6) text() string {
	if !a.p.IsValid() {
		return ""
	}
	if a.p.IsSingleIP() {
		return "@" + a.p.Addr().String()
	}
	return "@" + a.p.String()
}

func appendUniq[T comparable](list []T, s T) []T {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// portGroups groups the ports of one address by protocol, in the protocol
// table's order, once for protocols that have the same ports.
func portGroups(byProto map[model.Protocol][]model.PortRange, addr netip.Prefix) []PortGroup {
	// The table's protocols in its order, then any others (a table edited
	// by hand) by number.
	var order []model.Protocol
	for _, p := range model.Protocols() {
		order = append(order, p.Protocol)
	}
	var others []model.Protocol
	for p := range byProto {
		if !slices.Contains(order, p) {
			others = append(others, p)
		}
	}
	slices.Sort(others)
	var groups []PortGroup
	for _, proto := range append(order, others...) {
		rs, ok := byProto[proto]
		if !ok {
			continue
		}
		ports := model.Ports(slices.Clone(rs))
		slices.SortFunc(ports, func(a, b model.PortRange) int { return cmp.Compare(a.Lo, b.Lo) })
		i := slices.IndexFunc(groups, func(g PortGroup) bool { return slices.Equal(g.Ports, ports) })
		if i < 0 {
			groups = append(groups, PortGroup{Ports: ports, Addr: addr})
			i = len(groups) - 1
		}
		groups[i].Protocols = append(groups[i].Protocols, proto)
	}
	return groups
}
