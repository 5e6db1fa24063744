// Package bindguard refuses bind() on a reserved port to everyone who does
// not own it, with cgroup bind4/bind6 eBPF programs, and lets an owner bind
// its reserved port below net.ipv4.ip_unprivileged_port_start without any
// sysctl change.
//
// It is the first of portfw's three layers (see docs/layers.md): the
// nftables table starves a squatter of traffic but cannot stop it from
// binding first, and a squatter on a reserved UDP port (co-bound with
// SO_REUSEADDR, or silent) reads datagrams no rule can tie to it. A
// squatter that cannot bind has nothing.
//
// Spec is the description of one network namespace's guard, built from the
// ownership model by a pure, deterministic function. Host is the running
// thing: one bind4 and one bind6 program for the whole host, attached to the
// root of the cgroup v2 hierarchy with BPF_F_ALLOW_MULTI, their maps keyed
// by network namespace cookie, so that a thousand namespaces cost two
// programs (a cgroup holds at most 64 per attach type). Legacy attachment
// outlives the process with no pin and no bpffs; a later process finds the
// programs with BPF_PROG_QUERY and recognises them by name, tag, maps and
// creator.
package bindguard

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/portfw/portfw/model"
)

// OwnerID names one of a Spec's owner sets: Spec.Owners[id-1]. The zero
// OwnerID means "no owner": the bind is not restricted.
type OwnerID uint32

// Owners is a set of owners: a bind passes when the caller's uid is in UIDs
// or its gid in GIDs. Both are sorted and merged; both empty means nobody.
type Owners struct {
	UIDs []model.IDRange `json:"uids,omitempty"`
	GIDs []model.IDRange `json:"gids,omitempty"`
}

// Port is one reserved (protocol, port).
type Port struct {
	Proto model.Protocol `json:"proto"`
	Port  uint16         `json:"port"`
	// Default owns every address of the port that no Scope covers (a
	// reservation for every address, or the root-only guard); 0 when
	// other addresses are free.
	Default OwnerID `json:"default"`
	// Wild4 owns a bind to 0.0.0.0 and Wild6 one to ::. A wildcard socket
	// receives traffic for every address, so only someone who owns every
	// reservation on the port may have it; :: also counts as IPv4 because a
	// dual-stack socket receives IPv4 too (the hook cannot see IPV6_V6ONLY).
	Wild4 OwnerID `json:"wild4"`
	Wild6 OwnerID `json:"wild6"`
	// Scoped is true when the port has Scopes, so the program looks the
	// bound address up.
	Scoped bool `json:"scoped,omitempty"`
}

// Scope is an address-scoped reservation of one (protocol, port): binding an
// address inside Prefix needs Owner.
type Scope struct {
	Proto  model.Protocol `json:"proto"`
	Port   uint16         `json:"port"`
	Prefix netip.Prefix   `json:"prefix"` // IPv4 or IPv6, masked
	Owner  OwnerID        `json:"owner"`
}

// Spec is everything the guard enforces, keyed the way the program looks
// it up: a bind costs a few hash lookups whatever the size of the policy.
//
// Invariants (FromResolved establishes them, Apply relies on them): Owners
// are distinct and sorted; every OwnerID in Ports and Scopes is 0 or names
// one of them; Ports are sorted by (Proto, Port) and unique; Scopes are
// sorted by (Proto, Port, Prefix), their prefixes on one port do not
// overlap, and each has a Port entry with Scoped set.
type Spec struct {
	Owners []Owners `json:"owners"`
	Ports  []Port   `json:"ports"`
	Scopes []Scope  `json:"scopes,omitempty"`
}

// FromResolved builds the guard's Spec for a resolved policy: every
// reservation and every root-only guard entry, for each protocol whose
// bind() the cgroup hook sees, each port of a port range as its own key.
// Owners are the reservation's owners as the model says (root included when
// the policy allows it). It is pure and deterministic.
func FromResolved(r *model.Resolved) Spec {
	type key struct {
		proto model.Protocol
		port  uint16
	}
	type scope struct {
		prefix netip.Prefix
		owners Owners
	}
	defaults := map[key]*Owners{}
	scopes := map[key][]scope{}
	add := func(res *model.Reservation) {
		o := Owners{UIDs: res.Owners.UIDSet(), GIDs: model.MergeIDs(res.Owners.GIDs)}
		for _, proto := range res.Protocols {
			if info, _ := proto.Info(); !info.BindHook {
				continue
			}
			for _, pr := range res.Ports {
				for p := int(pr.Lo); p <= int(pr.Hi); p++ {
					k := key{proto, uint16(p)}
					if len(res.Addresses) > 0 {
						for _, pfx := range res.Addresses {
							scopes[k] = append(scopes[k], scope{pfx, o})
						}
						continue
					}
					own := o
					if d := defaults[k]; d != nil {
						// Never happens for a valid Resolved (no two reservations
						// share a port on every address); owning both is the
						// safe reading.
						own = intersect(*d, o)
					}
					defaults[k] = &own
				}
			}
		}
	}
	for _, res := range r.All() {
		add(res)
	}

	// Owner sets are numbered in sorted order, so the numbers depend only on
	// which sets exist.
	var all []Owners
	collect := func(o Owners) { all = append(all, o) }
	type port struct {
		key
		def, wild4, wild6 *Owners
		scoped            bool
	}
	var ports []port
	for k := range joinKeys(defaults, scopes) {
		p := port{key: k, def: defaults[k], scoped: len(scopes[k]) > 0}
		w4, w6 := p.def, p.def
		for _, s := range scopes[k] {
			if s.prefix.Addr().Is4() {
				w4 = intersectPtr(w4, s.owners)
			}
			w6 = intersectPtr(w6, s.owners)
			collect(s.owners)
		}
		p.wild4, p.wild6 = w4, w6
		for _, o := range []*Owners{p.def, w4, w6} {
			if o != nil {
				collect(*o)
			}
		}
		ports = append(ports, p)
	}
	slices.SortFunc(all, compareOwners)
	all = slices.CompactFunc(all, func(a, b Owners) bool { return compareOwners(a, b) == 0 })
	id := func(o *Owners) OwnerID {
		if o == nil {
			return 0
		}
		i, _ := slices.BinarySearchFunc(all, *o, compareOwners)
		return OwnerID(i + 1)
	}

	spec := Spec{Owners: all}
	for _, p := range ports {
		spec.Ports = append(spec.Ports, Port{Proto: p.proto, Port: p.port, Default: id(p.def),
			Wild4: id(p.wild4), Wild6: id(p.wild6), Scoped: p.scoped})
		for _, s := range scopes[p.key] {
			spec.Scopes = append(spec.Scopes, Scope{Proto: p.proto, Port: p.port, Prefix: s.prefix, Owner: id(&s.owners)})
		}
	}
	slices.SortFunc(spec.Ports, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	slices.SortFunc(spec.Scopes, func(a, b Scope) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port),
			a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	if spec.Owners == nil {
		spec.Owners = []Owners{}
	}
	return spec
}

func joinKeys[K comparable, A, B any](a map[K]A, b map[K]B) map[K]struct{} {
	out := make(map[K]struct{}, len(a)+len(b))
	for k := range a {
		out[k] = struct{}{}
	}
	for k := range b {
		out[k] = struct{}{}
	}
	return out
}

// intersect is who owns both a and b, read conservatively: a uid in both
// or a gid in both. (A caller whose uid owns one and whose gid owns the
// other also owns both; it is refused, which errs on the safe side.)
func intersect(a, b Owners) Owners {
	return Owners{UIDs: intersectIDs(a.UIDs, b.UIDs), GIDs: intersectIDs(a.GIDs, b.GIDs)}
}

func intersectPtr(a *Owners, b Owners) *Owners {
	if a == nil {
		return &b
	}
	o := intersect(*a, b)
	return &o
}

func intersectIDs(a, b []model.IDRange) []model.IDRange {
	var out []model.IDRange
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].Lo, b[j].Lo), min(a[i].Hi, b[j].Hi)
		if lo <= hi {
			out = append(out, model.IDRange{Lo: lo, Hi: hi})
		}
		if a[i].Hi < b[j].Hi {
			i++
		} else {
			j++
		}
	}
	return out
}

func compareOwners(a, b Owners) int {
	return cmp.Or(compareIDs(a.UIDs, b.UIDs), compareIDs(a.GIDs, b.GIDs))
}

func compareIDs(a, b []model.IDRange) int {
	return slices.CompareFunc(a, b, func(x, y model.IDRange) int {
		return cmp.Or(cmp.Compare(x.Lo, y.Lo), cmp.Compare(x.Hi, y.Hi))
	})
}

// String is the Spec's one text form, for tests and `portfw status`:
//
//	owners 1: uid 0,33 gid -
//	tcp/80 default 1 wild4 1 wild6 1
//	tcp/443 default - wild4 2 wild6 2 scoped
//	tcp/443 192.0.2.10/32 owners 2
func (s Spec) String() string {
	var b strings.Builder
	for i, o := range s.Owners {
		fmt.Fprintf(&b, "owners %d: uid %s gid %s\n", i+1, idList(o.UIDs), idList(o.GIDs))
	}
	for _, p := range s.Ports {
		fmt.Fprintf(&b, "%s/%d default %s wild4 %s wild6 %s", p.Proto, p.Port, p.Default, p.Wild4, p.Wild6)
		if p.Scoped {
			b.WriteString(" scoped")
		}
		b.WriteByte('\n')
	}
	for _, sc := range s.Scopes {
		fmt.Fprintf(&b, "%s/%d %s owners %s\n", sc.Proto, sc.Port, sc.Prefix, sc.Owner)
	}
	return b.String()
}

func (id OwnerID) String() string {
	if id == 0 {
		return "-"
	}
	return fmt.Sprint(uint32(id))
}

func idList(rs []model.IDRange) string {
	if len(rs) == 0 {
		return "-"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}
