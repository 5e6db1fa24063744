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
	Name           string   `json:"name"`
	Ports          []string `json:"ports"`          // "80,443/tcp", "5060,5070-5079/tcp+udp", "80/tcp@192.0.2.10"
	UIDs           []string `json:"uids,omitempty"` // "33", "1200-1299"
	GIDs           []string `json:"gids,omitempty"`
	DroppedPackets uint64   `json:"dropped_packets"`
	DroppedBytes   uint64   `json:"dropped_bytes"`
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
				sum.UIDs = appendUniq(sum.UIDs, e.ID.String())
			case s.Has(FieldGID):
				sum.GIDs = appendUniq(sum.GIDs, e.ID.String())
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
			s.Ports = append(s.Ports, portsText(ports[name][a], a.text())...)
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

func appendUniq(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// portsText writes the ports of one address per protocol, in the protocol
// table's order, and once for protocols that have the same ports:
// "5060,5070-5079/tcp+udp".
func portsText(byProto map[model.Protocol][]model.PortRange, addr string) []string {
	type group struct {
		ports string
		names []string
	}
	var groups []*group
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
	for _, proto := range append(order, others...) {
		rs, ok := byProto[proto]
		if !ok {
			continue
		}
		rs = slices.Clone(rs)
		slices.SortFunc(rs, func(a, b model.PortRange) int { return cmp.Compare(a.Lo, b.Lo) })
		parts := make([]string, len(rs))
		for i, r := range rs {
			parts[i] = r.String()
		}
		text := strings.Join(parts, ",")
		i := slices.IndexFunc(groups, func(g *group) bool { return g.ports == text })
		if i < 0 {
			groups = append(groups, &group{ports: text})
			i = len(groups) - 1
		}
		groups[i].names = append(groups[i].names, proto.String())
	}
	out := make([]string, len(groups))
	for i, g := range groups {
		out[i] = g.ports + "/" + strings.Join(g.names, "+") + addr
	}
	return out
}
