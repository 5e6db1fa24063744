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
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
)

// SpecVersion identifies what FromResolved and the map layout make of a
// policy: portfw trusts the guard's maps to hold what it would write now
// while a digest of the resolved policy and this SpecVersion match what it
// recorded. TestSpecVersion fails when the specs of its test policies
// change and SpecVersion does not.
const SpecVersion = layoutVersion*1000 + 1

// OwnerID names one of a Spec's owner sets: Spec.Owners[id-1]. The zero
// OwnerID means "no owner": the bind is not restricted.
type OwnerID uint32

// Owners is a set of owners: a bind passes when the caller's uid is in UIDs
// or its gid in GIDs, or when the binding task is in one of Cgroups or in a
// cgroup below one. UIDs and GIDs are sorted and merged; Cgroups are kernel
// cgroup ids (cgroup v2 directory inodes), sorted and unique: only cgroups
// that exist, since a waiting one owns nothing. All empty means nobody.
//
// The ids alone are enough: an id names one cgroup, so finding it among
// the binding task's ancestors (which the program looks up level by level)
// says the task is in it or below it, whatever its level.
type Owners struct {
	UIDs    []model.IDRange `json:"uids,omitempty"`
	GIDs    []model.IDRange `json:"gids,omitempty"`
	Cgroups []uint64        `json:"cgroups,omitempty"`
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
	in := newInterner()
	// The claims on each (protocol, port), in a slot per port of each
	// protocol seen rather than a map (hashing 20k keys and sorting them
	// was half of the time at 10k reservations): walked in order, the
	// ports come out sorted. Most ports have one holder: it is kept in the
	// slot's value, and only more of them in a slice.
	type holders struct {
		first holder
		more  []holder
	}
	var blocks [256][]int32 // per protocol, per port: 1 + the index in hs
	var protos []model.Protocol
	hs := make([]holders, 0, min(entryBounds(r)[0], 3<<16)) // the ports claimed, at most
	for _, res := range r.All() {
		eachHolder(res, in, func(k portKey, h holder) {
			block := blocks[k.proto]
			if block == nil {
				block = make([]int32, 1<<16)
				blocks[k.proto] = block
				protos = append(protos, k.proto)
			}
			if slot := &block[k.port]; *slot == 0 {
				hs = append(hs, holders{first: h})
				*slot = int32(len(hs))
			} else {
				x := &hs[*slot-1]
				x.more = append(x.more, h)
			}
		})
	}
	slices.Sort(protos)
	keys := make([]portKey, 0, len(hs))
	ports := make([]portOwners, 0, len(hs))
	var claims []holder
	for _, proto := range protos {
		for port, slot := range blocks[proto] {
			if slot == 0 {
				continue
			}
			x := &hs[slot-1]
			claims = append(append(claims[:0], x.first), x.more...)
			po := computePort(claims, in)
			po.each(func(o *ownerSet) { o.refs++ })
			keys = append(keys, portKey{proto, uint16(port)})
			ports = append(ports, po)
		}
	}
	// Owner sets are numbered in sorted order, so the numbers depend only on
	// which sets exist. (The interner is this call's own: its sets'
	// counts and numbers are free to use.)
	all := make([]*ownerSet, 0, len(in))
	for _, o := range in {
		if o.refs > 0 {
			all = append(all, o)
		}
	}
	slices.SortFunc(all, func(a, b *ownerSet) int { return compareOwners(a.o, b.o) })
	spec := Spec{Owners: make([]Owners, len(all))}
	for i, o := range all {
		o.num = uint32(i + 1)
		spec.Owners[i] = o.o
	}
	spec.Ports = make([]Port, 0, len(ports))
	for i, po := range ports {
		port, scopes := po.spec(keys[i], func(o *ownerSet) OwnerID { return OwnerID(o.num) })
		spec.Ports = append(spec.Ports, port)
		spec.Scopes = append(spec.Scopes, scopes...)
	}
	sortSpec(&spec) // in order already: checked in one pass
	return spec
}

// entryBounds is about how many entries r's spec puts in each inner map, in
// mapNames[1:] order, from a pass over r without working the spec out:
// what a new generation's maps are made for before the spec is known. At
// most that for the ports and scopes; the owner sets' entries are counted
// once per reservation (a set shared by many is fewer), but the sets that
// address-scoped ports make by intersecting their owners' are not: a spec
// that outgrows a bound only costs the apply a map made again.
func entryBounds(r *model.Resolved) [4]int {
	var b [4]int
	for _, res := range r.All() {
		protos := 0
		for _, p := range res.Protocols {
			if info, _ := p.Info(); info.BindHook {
				protos++
			}
		}
		if protos == 0 {
			continue
		}
		ports := 0
		for _, p := range res.Ports {
			ports += p.Len()
		}
		b[0] += protos * ports
		b[1] += protos * ports * len(res.Addresses)
		b[2] += len(res.Owners.Cgroups)
		for _, ids := range [][]model.IDRange{res.Owners.UIDs, res.Owners.GIDs, {model.ID(0)}} { // uid 0: root folded in
			for _, id := range ids {
				if id.Lo == id.Hi {
					b[2]++
				} else {
					b[3] += len(idPrefixes(id.Lo, id.Hi))
				}
			}
		}
	}
	return b
}

func sortSpec(spec *Spec) {
	byPort := func(a, b Port) int {
		return cmp.Compare(portKey{a.Proto, a.Port}.sortKey(), portKey{b.Proto, b.Port}.sortKey())
	}
	if !slices.IsSortedFunc(spec.Ports, byPort) {
		slices.SortFunc(spec.Ports, byPort)
	}
	byScope := func(a, b Scope) int {
		return cmp.Or(cmp.Compare(portKey{a.Proto, a.Port}.sortKey(), portKey{b.Proto, b.Port}.sortKey()),
			a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	}
	if !slices.IsSortedFunc(spec.Scopes, byScope) {
		slices.SortFunc(spec.Scopes, byScope)
	}
}

// portKey is one guarded (protocol, port).
type portKey struct {
	proto model.Protocol
	port  uint16
}

// sortKey orders keys by protocol, then port.
func (k portKey) sortKey() uint32 { return uint32(k.proto)<<16 | uint32(k.port) }

// ownerSet is an interned owner set. The Builder numbers and counts it;
// FromResolved only interns.
type ownerSet struct {
	o    Owners
	key  string
	num  uint32 // its number in the maps (Builder)
	refs int    // ports and scopes naming it (Builder)
}

// interner gives equal owner sets one *ownerSet.
type interner map[string]*ownerSet

func newInterner() interner { return interner{} }

func (in interner) of(o Owners) *ownerSet {
	var buf [64]byte
	b := appendOwnersKey(buf[:0], o)
	if s := in[string(b)]; s != nil { // a lookup by bytes copies nothing
		return s
	}
	k := string(b)
	s := &ownerSet{o: o, key: k}
	in[k] = s
	return s
}

// holder is a reservation's claim on one (protocol, port): its owners, on
// every address (prefix invalid) or on one address prefix.
type holder struct {
	owners *ownerSet
	prefix netip.Prefix
}

// eachHolder calls f for every (protocol, port) res holds in the guard: its
// protocols the bind hook sees, each port of a port range, each address.
func eachHolder(res *model.Reservation, in interner, f func(portKey, holder)) {
	var o *ownerSet // interned only for a reservation the hook sees
	for _, proto := range res.Protocols {
		if info, _ := proto.Info(); !info.BindHook {
			continue
		}
		if o == nil {
			o = in.of(ownersOf(res.Owners))
		}
		for _, pr := range res.Ports {
			for p := int(pr.Lo); p <= int(pr.Hi); p++ {
				k := portKey{proto, uint16(p)}
				if len(res.Addresses) == 0 {
					f(k, holder{owners: o})
					continue
				}
				for _, pfx := range res.Addresses {
					f(k, holder{o, pfx})
				}
			}
		}
	}
}

// ownersOf is the guard's owner set of a reservation's owners: root folded
// into the uids, the gids merged, the ids of the cgroups that exist. (The
// program looks at levels 1 to model.MaxCgroupLevel: a cgroup outside them,
// which resolve refuses, would own nothing, never everything.)
func ownersOf(o model.Owners) Owners {
	var cgroups []uint64
	for _, c := range o.Live() {
		cgroups = append(cgroups, c.ID)
	}
	slices.Sort(cgroups)
	return Owners{UIDs: o.UIDSet(), GIDs: model.MergeIDs(o.GIDs), Cgroups: slices.Compact(cgroups)}
}

// portOwners is what the guard holds for one (protocol, port).
type portOwners struct {
	def, wild4, wild6 *ownerSet // nil: no owner (anyone may bind)
	scopes            []scopeOwner
}

type scopeOwner struct {
	prefix netip.Prefix
	owners *ownerSet
}

// computePort decides a port's owners from the claims on it: the default
// owns every address no scope covers; a wildcard bind needs someone who
// owns every reservation on the port (:: counts as IPv4 too, since the hook
// cannot see IPV6_V6ONLY).
func computePort(hs []holder, in interner) portOwners {
	var po portOwners
	for _, h := range hs {
		if h.prefix.IsValid() {
			po.scopes = append(po.scopes, scopeOwner{h.prefix, h.owners})
			continue
		}
		if po.def == nil {
			po.def = h.owners
		} else {
			// Never happens for a valid Resolved (no two reservations
			// share a port on every address); owning both is the safe
			// reading.
			po.def = in.of(intersect(po.def.o, h.owners.o))
		}
	}
	slices.SortFunc(po.scopes, func(a, b scopeOwner) int {
		return cmp.Or(a.prefix.Addr().Compare(b.prefix.Addr()), cmp.Compare(a.prefix.Bits(), b.prefix.Bits()),
			strings.Compare(a.owners.key, b.owners.key))
	})
	po.wild4, po.wild6 = po.def, po.def
	for _, s := range po.scopes {
		if s.prefix.Addr().Is4() {
			po.wild4 = intersectSet(po.wild4, s.owners, in)
		}
		po.wild6 = intersectSet(po.wild6, s.owners, in)
	}
	return po
}

// each calls f for every owner set the port names, once per naming.
func (po portOwners) each(f func(*ownerSet)) {
	for _, o := range []*ownerSet{po.def, po.wild4, po.wild6} {
		if o != nil {
			f(o)
		}
	}
	for _, s := range po.scopes {
		f(s.owners)
	}
}

// spec writes the port as the Spec's entries, owner sets numbered by id.
func (po portOwners) spec(k portKey, id func(*ownerSet) OwnerID) (Port, []Scope) {
	ref := func(o *ownerSet) OwnerID {
		if o == nil {
			return 0
		}
		return id(o)
	}
	p := Port{Proto: k.proto, Port: k.port, Default: ref(po.def), Wild4: ref(po.wild4), Wild6: ref(po.wild6), Scoped: len(po.scopes) > 0}
	var scopes []Scope
	for _, s := range po.scopes {
		scopes = append(scopes, Scope{Proto: k.proto, Port: k.port, Prefix: s.prefix, Owner: ref(s.owners)})
	}
	return p, scopes
}

// intersectSet is intersect of interned sets; a nil a is "anyone".
func intersectSet(a, b *ownerSet, in interner) *ownerSet {
	if a == nil {
		return b
	}
	return in.of(intersect(a.o, b.o))
}

// ownersKey is an owner set's identity: the length of each list, then its
// ranges and cgroup ids in binary.
func ownersKey(o Owners) string { return string(appendOwnersKey(nil, o)) }

func appendOwnersKey(b []byte, o Owners) []byte {
	for _, n := range []int{len(o.UIDs), len(o.GIDs), len(o.Cgroups)} {
		b = binary.LittleEndian.AppendUint32(b, uint32(n))
	}
	for _, ids := range [][]model.IDRange{o.UIDs, o.GIDs} {
		for _, r := range ids {
			b = binary.LittleEndian.AppendUint32(b, r.Lo)
			b = binary.LittleEndian.AppendUint32(b, r.Hi)
		}
	}
	for _, id := range o.Cgroups {
		b = binary.LittleEndian.AppendUint64(b, id)
	}
	return b
}

// intersect is who owns both a and b, read conservatively: a uid in both,
// a gid in both or a cgroup in both. (A caller whose uid owns one and whose
// gid or cgroup owns the other also owns both, and so does a task in a
// cgroup of a that lies below a cgroup of b; they are refused, which errs on
// the safe side.)
func intersect(a, b Owners) Owners {
	return Owners{UIDs: intersectIDs(a.UIDs, b.UIDs), GIDs: intersectIDs(a.GIDs, b.GIDs), Cgroups: intersectSorted(a.Cgroups, b.Cgroups)}
}

// intersectSorted is the ids in both sorted lists.
func intersectSorted(a, b []uint64) []uint64 {
	var out []uint64
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
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
	return cmp.Or(compareIDs(a.UIDs, b.UIDs), compareIDs(a.GIDs, b.GIDs), slices.Compare(a.Cgroups, b.Cgroups))
}

func compareIDs(a, b []model.IDRange) int {
	return slices.CompareFunc(a, b, func(x, y model.IDRange) int {
		return cmp.Or(cmp.Compare(x.Lo, y.Lo), cmp.Compare(x.Hi, y.Hi))
	})
}

// String is the Spec's one text form, for tests and `portfw status`:
//
//	owners 1: uid 0,33 gid -
//	owners 2: uid - gid - cgroup 4242,4711
//	tcp/80 default 1 wild4 1 wild6 1
//	tcp/443 default - wild4 2 wild6 2 scoped
//	tcp/443 192.0.2.10/32 owners 2
func (s Spec) String() string {
	var b strings.Builder
	for i, o := range s.Owners {
		fmt.Fprintf(&b, "owners %d: uid %s gid %s", i+1, idList(o.UIDs), idList(o.GIDs))
		if len(o.Cgroups) > 0 {
			ids := make([]string, len(o.Cgroups))
			for j, id := range o.Cgroups {
				ids[j] = strconv.FormatUint(id, 10)
			}
			b.WriteString(" cgroup " + strings.Join(ids, ","))
		}
		b.WriteByte('\n')
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
