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
	Ports      []PortGroup
	UIDs, GIDs []model.IDRange
	// Cgroups are the ids of the owner cgroups, sorted; Exact is true for
	// a reservation only cgroups own (input checked by socket lookup).
	Cgroups                      []uint64
	Exact                        bool
	DroppedPackets, DroppedBytes uint64 // both directions
	// DroppedIn counts what reached a squatter's port from outside (and
	// SYNs with data), DroppedOut what a squatter sent.
	DroppedIn, DroppedOut Counter
}

// Counter is packets and bytes.
type Counter struct{ Packets, Bytes uint64 }

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

// Unlabelled is the name Summarize gives the elements that name no
// reservation (added to the table by hand). No reservation can be called
// that: names start with a letter.
const Unlabelled = "(no reservation)"

// Summarize lists the reservations in rs, sorted by name (elements of no
// reservation as one named Unlabelled). Counters come from the count and
// drop sets, so they are non-zero only for a ruleset read back from the
// kernel: those on the drop sets' elements go to the element's
// reservation, a count set's key to the reservation whose membership set
// holds it (keys no reservation holds now, counted before an edit, are
// left out). It is one pass over the elements with one accumulator
// per reservation: at 10k reservations a table holds 40k elements.
func Summarize(rs *Ruleset) []Summary {
	// Accumulators in a slice, found by name (and, for the runs of one
	// reservation's elements that sets hold, by the last one used).
	hint := 0 // reservations: about half the membership elements (two protocols)
	for _, s := range rs.Sets {
		if IsMembershipSet(s.Name) {
			hint += len(s.Elements)/2 + 1
		}
	}
	accs := make([]acc, 0, hint)
	index := make(map[string]int, hint)
	find := func(name string) int {
		i, ok := index[name]
		if !ok {
			i = len(accs)
			index[name] = i
			accs = append(accs, acc{sum: Summary{Name: name}})
		}
		return i
	}
	for _, s := range rs.Sets {
		kind := 0 // membership
		in := DropDirection(s.Name) == "in"
		switch {
		case s.Dynamic:
			continue // counted below
		case s.Counter:
			kind = 1
		case s.Has(FieldUID):
			kind = 2
		case s.Has(FieldGID):
			kind = 3
		case s.Has(FieldCgroup):
			kind = 4
		case slices.Contains([]string{specs[setCgOnly].name, specs[setCgOnlyR].name, specs[setCg4Only].name, specs[setCg6Only].name}, s.Name):
			kind = 5
		}
		last := -1
		for _, e := range s.Elements {
			if e.Comment == "" {
				e.Comment = Unlabelled
			}
			if last < 0 || accs[last].sum.Name != e.Comment {
				last = find(e.Comment)
			}
			a := &accs[last]
			switch kind {
			case 1:
				a.count(in, e.Packets, e.Bytes)
			case 2:
				a.sum.UIDs = append(a.sum.UIDs, e.ID)
			case 3:
				a.sum.GIDs = append(a.sum.GIDs, e.ID)
			case 4:
				a.sum.Cgroups = append(a.sum.Cgroups, e.Cgroup)
			case 5:
				a.sum.Exact = true
			default:
				a.ports = append(a.ports, portItem{e.Addr, e.Proto, e.Ports})
			}
		}
	}
	attributeCounts(rs, func(name string, in bool, packets, bytes uint64) { accs[find(name)].count(in, packets, bytes) })
	byLo := func(a, b model.IDRange) int { return cmp.Compare(a.Lo, b.Lo) }
	order := make([]int, len(accs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int { return cmp.Compare(accs[i].sum.Name, accs[j].sum.Name) })
	out := make([]Summary, 0, len(accs))
	for _, i := range order {
		a := &accs[i]
		s := a.sum
		// A table read back holds its elements in the kernel's order, and
		// an owner appears once per port in the owner sets.
		s.UIDs = sortedIDs(s.UIDs, byLo)
		s.GIDs = sortedIDs(s.GIDs, byLo)
		if !slices.IsSorted(s.Cgroups) {
			slices.Sort(s.Cgroups)
		}
		s.Cgroups = slices.Compact(s.Cgroups)
		s.Ports = portGroups(a.ports)
		out = append(out, s)
	}
	return out
}

// acc is Summarize's accumulator of one reservation.
type acc struct {
	sum   Summary
	ports []portItem
}

// count adds dropped packets and bytes, of direction in or out.
func (a *acc) count(in bool, packets, bytes uint64) {
	a.sum.DroppedPackets += packets
	a.sum.DroppedBytes += bytes
	c := &a.sum.DroppedOut
	if in {
		c = &a.sum.DroppedIn
	}
	c.Packets += packets
	c.Bytes += bytes
}

// portItem is a membership element's ports.
type portItem struct {
	addr  netip.Prefix
	proto model.Protocol
	ports model.PortRange
}

func sortedIDs(ids []model.IDRange, byLo func(a, b model.IDRange) int) []model.IDRange {
	if !slices.IsSortedFunc(ids, byLo) {
		slices.SortFunc(ids, byLo)
	}
	return slices.Compact(ids)
}

// protoRank orders protocols as the protocol table does, any others (a
// table edited by hand) after them by number.
var protoRank = func() (r [256]int) {
	for i := range r {
		r[i] = len(model.Protocols()) + i
	}
	for i, p := range model.Protocols() {
		r[p.Protocol] = i
	}
	return r
}()

// portGroups groups a reservation's ports: by address (every address
// first), per address the protocols in the protocol table's order, once
// for protocols that have the same ports. items is sorted here.
func portGroups(items []portItem) []PortGroup {
	byItem := func(x, y portItem) int {
		return cmp.Or(comparePrefix(x.addr, y.addr), cmp.Compare(protoRank[x.proto], protoRank[y.proto]), cmp.Compare(x.ports.Lo, y.ports.Lo))
	}
	if !slices.IsSortedFunc(items, byItem) {
		slices.SortFunc(items, byItem)
	}
	items = slices.Compact(items)
	var groups []PortGroup
	for i := 0; i < len(items); {
		addr := items[i].addr
		first := len(groups)
		for i < len(items) && items[i].addr == addr {
			proto := items[i].proto
			j := i
			for j < len(items) && items[j].addr == addr && items[j].proto == proto {
				j++
			}
			ports := make(model.Ports, j-i)
			for k := range ports {
				ports[k] = items[i+k].ports
			}
			g := slices.IndexFunc(groups[first:], func(g PortGroup) bool { return slices.Equal(g.Ports, ports) })
			if g < 0 {
				groups = append(groups, PortGroup{Ports: ports, Addr: addr})
				g = len(groups) - 1 - first
			}
			groups[first+g].Protocols = append(groups[first+g].Protocols, proto)
			i = j
		}
	}
	return groups
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

// attributeCounts calls count for each counted key of rs's count sets with
// the reservation the key is in: the comment of the membership element
// that holds it, found as the drop chains' rules found it (exact ports,
// then port ranges). The membership sets are indexed only when something
// was counted.
func attributeCounts(rs *Ruleset, count func(name string, in bool, packets, bytes uint64)) {
	var sets []*Set
	for _, s := range rs.Sets {
		if s.Dynamic && len(s.Counts) > 0 {
			sets = append(sets, s)
		}
	}
	if len(sets) == 0 {
		return
	}
	type pp struct {
		proto model.Protocol
		port  uint16
	}
	exact := map[pp]string{}
	var ranges []Element // sorted by protocol and port
	for _, s := range rs.Sets {
		switch s.Name {
		case specs[setRes].name:
			for _, e := range s.Elements {
				exact[pp{e.Proto, e.Ports.Lo}] = e.Comment
			}
		case specs[setResR].name:
			ranges = append(ranges, s.Elements...)
		}
	}
	slices.SortFunc(ranges, func(a, b Element) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Ports.Lo, b.Ports.Lo))
	})
	owner := func(k Element) (string, bool) {
		port := k.Ports.Lo
		if name, ok := exact[pp{k.Proto, port}]; ok {
			return name, true
		}
		// The last range starting at or below port (ranges do not overlap).
		i, _ := slices.BinarySearchFunc(ranges, pp{k.Proto, port}, func(e Element, t pp) int {
			return cmp.Or(cmp.Compare(e.Proto, t.proto), cmp.Compare(int(e.Ports.Lo), int(t.port)+1))
		})
		if i > 0 && ranges[i-1].Proto == k.Proto && ranges[i-1].Ports.Hi >= port {
			return ranges[i-1].Comment, true
		}
		return "", false
	}
	for _, s := range sets {
		in := DropDirection(s.Name) == "in"
		for _, k := range s.Counts {
			if name, ok := owner(k); ok {
				if name == "" {
					name = Unlabelled
				}
				count(name, in, k.Packets, k.Bytes)
			}
		}
	}
}
