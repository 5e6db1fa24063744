package compiler

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"

	"github.com/portfw/portfw/model"
)

// The sets a ruleset may hold, in the order they are declared. A set is
// declared only when it has elements, so a small policy reads small; the
// rules that use a set appear with it.
//
// Why the split: exact keys go into hash sets, whose lookup cost does not
// depend on their size; anything with a range (a port range, a uid range)
// goes into an interval set, whose cost grows with its number of elements
// (measured: 10x per packet at 20k elements), so those stay small.
// Address-scoped reservations are expected to be few and always use
// interval sets, since addresses may be prefixes.
//
// Because no (protocol, port, address) is in two reservations, a packet's
// reservation is found by whichever membership set holds its key, and the
// owner sets of other reservations never hold a key for it.
type setSpec struct {
	name     string
	fields   []Field
	interval bool
	counter  bool // a counter on each element
	dynamic  bool // a count set: the kernel adds the keys of drops
}

var (
	pp   = []Field{FieldProto, FieldPort}
	pp4  = []Field{FieldIPv4, FieldProto, FieldPort}
	pp6  = []Field{FieldIPv6, FieldProto, FieldPort}
	ppU  = []Field{FieldProto, FieldPort, FieldUID}
	ppG  = []Field{FieldProto, FieldPort, FieldGID}
	pp4U = []Field{FieldIPv4, FieldProto, FieldPort, FieldUID}
	pp4G = []Field{FieldIPv4, FieldProto, FieldPort, FieldGID}
	pp6U = []Field{FieldIPv6, FieldProto, FieldPort, FieldUID}
	pp6G = []Field{FieldIPv6, FieldProto, FieldPort, FieldGID}
	ppC  = []Field{FieldProto, FieldPort, FieldCgroup}
	pp4C = []Field{FieldIPv4, FieldProto, FieldPort, FieldCgroup}
	pp6C = []Field{FieldIPv6, FieldProto, FieldPort, FieldCgroup}
)

const (
	setRes = iota
	setResR
	setRes4
	setRes6
	setOwnUID
	setOwnUIDR
	setOwnGID
	setOwnGIDR
	setOwn4UID
	setOwn4GID
	setOwn6UID
	setOwn6GID
	// The count sets of output and input: dynamic sets the drop chains
	// add a dropped packet's protocol . port to, each key with a counter
	// (see dropChain).
	setCnt
	setCntIn
	// The drop sets of the address-scoped reservations, output's and
	// input's: their elements, each with a counter, mirror res4 and res6.
	setDrop4
	setDrop6
	setDropIn4
	setDropIn6
	// The reservations only cgroups own (model.Owners.CgroupOnly): on
	// input a socket outside them is dropped, since the socket lookup is
	// exact there.
	setCgOnly
	setCgOnlyR
	setCg4Only
	setCg6Only
	// The owner sets of cgroups, cgKinds per level 1..model.MaxCgroupLevel
	// from setOwnCg on (see cgSet): the key's cgroup is the socket's
	// ancestor at that level, so an owner's child cgroups match too.
	setOwnCg
	numSets = setOwnCg + cgKinds*model.MaxCgroupLevel
)

// The kinds of cgroup owner set of one level, as offsets from its first.
const (
	cgExact = iota // every address, one port
	cgRange        // every address, a port range
	cg4            // IPv4 address-scoped
	cg6            // IPv6 address-scoped
	cgKinds
)

// cgSet is the index of the owner set of kind at level.
func cgSet(level uint8, kind int) int { return setOwnCg + (int(level)-1)*cgKinds + kind }

// dropSets is where each membership set's drops are counted, output's
// then input's: each direction counts its own, so status and metrics can
// tell a squatter's replies (out) from what clients sent it (in). The exact
// and range sets share a count set (its key is protocol . port).
var dropSets = map[int][2]int{
	setRes: {setCnt, setCntIn}, setResR: {setCnt, setCntIn},
	setRes4: {setDrop4, setDropIn4}, setRes6: {setDrop6, setDropIn6},
}

// CountSize is the most keys a count set holds: every port of two
// protocols. Its keys can only be reserved (protocol, port) pairs, so the
// policy bounds them (a port range's drops are counted per port); the
// kernel allocates per key added, not for the size. A full set counts no
// new key; the packet is dropped all the same (dropChain).
//
// The address-scoped reservations keep a counter per element of drop sets
// instead: keyed by the packet's address, a count set could be filled by
// a squatter sending from 65536 addresses of a reserved IPv6 prefix
// (IP_FREEBIND needs no privilege), blinding the counters and costing a
// per-CPU counter each; those reservations are few, and so are their
// elements.
const CountSize = 1 << 17

var specs = withCgroupSets([numSets]setSpec{
	setRes:     {"res_port", pp, false, false, false},
	setResR:    {"res_port_r", pp, true, false, false},
	setRes4:    {"res4", pp4, true, false, false},
	setRes6:    {"res6", pp6, true, false, false},
	setOwnUID:  {"own_uid", ppU, false, false, false},
	setOwnUIDR: {"own_uid_r", ppU, true, false, false},
	setOwnGID:  {"own_gid", ppG, false, false, false},
	setOwnGIDR: {"own_gid_r", ppG, true, false, false},
	setOwn4UID: {"own4_uid", pp4U, true, false, false},
	setOwn4GID: {"own4_gid", pp4G, true, false, false},
	setOwn6UID: {"own6_uid", pp6U, true, false, false},
	setOwn6GID: {"own6_gid", pp6G, true, false, false},
	setCnt:     {"cnt_out", pp, false, true, true},
	setCntIn:   {"cnt_in", pp, false, true, true},
	setDrop4:   {"drop4_out", pp4, true, true, false},
	setDrop6:   {"drop6_out", pp6, true, true, false},
	setDropIn4: {"drop4_in", pp4, true, true, false},
	setDropIn6: {"drop6_in", pp6, true, true, false},
	setCgOnly:  {"cg_only", pp, false, false, false},
	setCgOnlyR: {"cg_only_r", pp, true, false, false},
	setCg4Only: {"cg4_only", pp4, true, false, false},
	setCg6Only: {"cg6_only", pp6, true, false, false},
})

// cgLevels is the level of each owner set of cgroups, by name.
var cgLevels = map[string]uint8{}

// withCgroupSets adds the owner sets of cgroups to specs (in the variable's
// initialiser, so that other package variables made from specs see them).
func withCgroupSets(specs [numSets]setSpec) [numSets]setSpec {
	for l := uint8(1); l <= model.MaxCgroupLevel; l++ {
		n := strconv.Itoa(int(l))
		specs[cgSet(l, cgExact)] = setSpec{"own_cg" + n, ppC, false, false, false}
		specs[cgSet(l, cgRange)] = setSpec{"own_cg" + n + "_r", ppC, true, false, false}
		specs[cgSet(l, cg4)] = setSpec{"own4_cg" + n, pp4C, true, false, false}
		specs[cgSet(l, cg6)] = setSpec{"own6_cg" + n, pp6C, true, false, false}
		for k := range cgKinds {
			cgLevels[specs[cgSet(l, k)].name] = l
		}
	}
	return specs
}

// DropDirection says which direction's drops a set counts: "in" or
// "out", and "" for a set that counts none (not a count or drop set).
func DropDirection(set string) string {
	for _, d := range dropSets {
		for dir, i := range d {
			if specs[i].name == set {
				return [2]string{"out", "in"}[dir]
			}
		}
	}
	return ""
}

// IsMembershipSet says whether a set is one of the membership sets (which
// ports, and addresses, are reserved), which attribute the count sets' keys.
func IsMembershipSet(set string) bool {
	for m := range dropSets {
		if specs[m].name == set {
			return true
		}
	}
	return false
}

// Chain names. The base chains only classify (is the local port
// reserved?); the check chains decide; the drop chains log, count, drop.
const (
	ChainOutput    = "output"
	ChainInput     = "input"
	ChainOutCheck  = "out_check"
	ChainInCheck   = "in_check"
	ChainInSyn     = "in_syn"
	ChainOutSynAck = "out_synack"
	ChainInAck     = "in_ack"
	ChainOutDrop   = "out_drop"
	ChainInDrop    = "in_drop"
)

// LogPrefixOut and LogPrefixIn start every kernel log line portfw writes.
const (
	LogPrefixOut = "portfw: drop out "
	LogPrefixIn  = "portfw: drop in "
)

// Compile turns a resolved policy into the ruleset that enforces it. It is
// pure and deterministic. r must satisfy the invariants documented on
// model.Resolved.
func Compile(r *model.Resolved) *Ruleset {
	var elems [numSets][]Element
	// Root owns every reservation through one rule when the policy allows
	// it everywhere (settings.allow_root); otherwise reservations owned by
	// root (the guard) carry uid 0 in the owner sets.
	rootRule := r.Settings.AllowRoot
	// Counted first, so each set's elements are allocated once (growing
	// the slices of a 100k table was a third of Compile).
	var count [numSets]int
	for _, res := range r.All() {
		eachElement(res, rootRule, func(set int, _ Element) { count[set]++ })
	}
	for i, n := range count {
		if n > 0 {
			elems[i] = make([]Element, 0, n)
		}
	}
	used := map[model.Protocol]bool{}
	for _, res := range r.All() {
		addElements(&elems, res, rootRule)
		for _, p := range res.Protocols {
			used[p] = true
		}
	}
	// The owner sets of cgroups are declared for every level an owner has
	// or had, even while waiting (empty): a unit's restart is then an
	// element delta, not a new ruleset.
	var declared [numSets]bool
	for _, res := range r.All() {
		for _, i := range cgroupSets(res) {
			declared[i] = true
		}
	}
	// The count sets (no elements: the kernel adds them) when the exact or
	// range membership set is in use.
	if len(elems[setRes])+len(elems[setResR]) > 0 {
		declared[setCnt], declared[setCntIn] = true, true
	}
	var sets [numSets]*Set
	rs := &Ruleset{Table: r.Settings.Table}
	for i, e := range elems {
		if len(e) == 0 && !declared[i] {
			continue
		}
		SortElements(e)
		sp := specs[i]
		sets[i] = &Set{Name: sp.name, Fields: sp.fields, Interval: sp.interval, Counter: sp.counter, Dynamic: sp.dynamic, Elements: e}
		rs.Sets = append(rs.Sets, sets[i])
	}
	c := compiling{sets: &sets, st: r.Settings, rootRule: rootRule}
	for _, p := range model.Protocols() {
		if used[p.Protocol] && p.Stream {
			c.stream = append(c.stream, p.Protocol)
		}
	}
	c.tcp = used[model.TCP]
	out, in := directions()
	rs.Chains = []*Chain{
		c.classify(ChainOutput, "output", ChainOutCheck, out),
		c.classify(ChainInput, "input", ChainInCheck, in),
		c.outCheck(out),
		c.inCheck(in),
	}
	if c.tcp {
		rs.Chains = append(rs.Chains, synChain())
		if slices.ContainsFunc(cgOnlySets, func(i int) bool { return sets[i] != nil }) {
			rs.Chains = append(rs.Chains, synAckChain(), ackChain())
		}
	}
	rs.Chains = append(rs.Chains,
		c.dropChain(ChainOutDrop, LogPrefixOut, out),
		c.dropChain(ChainInDrop, LogPrefixIn, in))
	return rs
}

func addElements(elems *[numSets][]Element, res *model.Reservation, rootRule bool) {
	eachElement(res, rootRule, func(set int, e Element) { elems[set] = append(elems[set], e) })
}

// eachElement calls add for every element res puts in the sets.
func eachElement(res *model.Reservation, rootRule bool, add func(set int, e Element)) {
	uids := res.Owners.UIDs
	if res.Owners.Root && !rootRule && !model.ContainsID(uids, 0) {
		uids = model.ExactIDs(append([]model.IDRange{model.ID(0)}, uids...))
	}
	cgroups := res.Owners.Live()
	cgOnly := res.Owners.CgroupOnly()
	for _, proto := range res.Protocols {
		for _, ports := range res.Ports {
			portRange := ports.Lo != ports.Hi
			if len(res.Addresses) == 0 {
				e := Element{Proto: proto, Ports: ports, Comment: res.Name}
				membership := setRes
				if portRange {
					membership = setResR
				}
				add(membership, e)
				for _, id := range uids {
					e.ID = id
					add(pick(portRange || id.Lo != id.Hi, setOwnUID, setOwnUIDR), e)
				}
				for _, id := range res.Owners.GIDs {
					e.ID = id
					add(pick(portRange || id.Lo != id.Hi, setOwnGID, setOwnGIDR), e)
				}
				e.ID = model.IDRange{}
				if cgOnly {
					add(pick(portRange, setCgOnly, setCgOnlyR), e)
				}
				for _, cg := range cgroups {
					e.Cgroup, e.CgroupPath = cg.ID, cg.Path
					add(cgSet(cg.Level, pick(portRange, cgExact, cgRange)), e)
				}
				continue
			}
			for _, addr := range res.Addresses {
				membership, ownU, ownG := setRes4, setOwn4UID, setOwn4GID
				if addr.Addr().Is6() {
					membership, ownU, ownG = setRes6, setOwn6UID, setOwn6GID
				}
				e := Element{Addr: addr, Proto: proto, Ports: ports, Comment: res.Name}
				add(membership, e)
				add(dropSets[membership][0], e)
				add(dropSets[membership][1], e)
				for _, id := range uids {
					e.ID = id
					add(ownU, e)
				}
				for _, id := range res.Owners.GIDs {
					e.ID = id
					add(ownG, e)
				}
				e.ID = model.IDRange{}
				kind, only := cg4, setCg4Only
				if addr.Addr().Is6() {
					kind, only = cg6, setCg6Only
				}
				if cgOnly {
					add(only, e)
				}
				for _, cg := range cgroups {
					e.Cgroup, e.CgroupPath = cg.ID, cg.Path
					add(cgSet(cg.Level, kind), e)
				}
			}
		}
	}
}

// cgroupSets are the owner sets of cgroups res uses: for each level its
// cgroups have (waiting ones included, when their level is known), the
// kinds its ports and addresses need.
func cgroupSets(res *model.Reservation) []int {
	var out []int
	for _, c := range res.Owners.Cgroups {
		if c.Level == 0 || c.Level > model.MaxCgroupLevel {
			continue
		}
		if len(res.Addresses) == 0 {
			for _, p := range res.Ports {
				out = append(out, cgSet(c.Level, pick(p.Lo != p.Hi, cgExact, cgRange)))
			}
			continue
		}
		for _, a := range res.Addresses {
			out = append(out, cgSet(c.Level, pick(a.Addr().Is6(), cg4, cg6)))
		}
	}
	return out
}

func pick(ranged bool, exact, interval int) int {
	if ranged {
		return interval
	}
	return exact
}

// SortElements puts elements in the canonical order of the text form:
// address, protocol, port, id. Rulesets read back from the kernel use it
// too, so a table and its policy compare as text.
//
// It sorts the elements' indexes and then moves each element once: an
// Element is about 100 bytes, and sorting them in place (copies in every
// comparison and swap) was most of Compile's time at 10k reservations.
func SortElements(es []Element) {
	if sortedElements(es) {
		return
	}
	model.Permute(es, sortedIndexes(es))
}

// sortedIndexes is the order of es as indexes. Elements without an address
// or cgroup (most of a table) sort by one integer made of their protocol,
// port and id, which compare in that order.
func sortedIndexes(es []Element) []int32 {
	idx := make([]int32, len(es))
	plain := true
	for i := range es {
		idx[i] = int32(i)
		plain = plain && !es[i].Addr.IsValid() && es[i].Cgroup == 0
	}
	if !plain {
		slices.SortFunc(idx, func(i, j int32) int { return compareElements(&es[i], &es[j]) })
		return idx
	}
	type keyed struct {
		key uint64
		i   int32
	}
	ks := make([]keyed, len(es))
	for i, e := range es {
		ks[i] = keyed{uint64(e.Proto)<<48 | uint64(e.Ports.Lo)<<32 | uint64(e.ID.Lo), int32(i)}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return cmp.Compare(a.key, b.key) })
	for k := range ks {
		idx[k] = ks[k].i
	}
	return idx
}

func sortedElements(es []Element) bool {
	for i := 1; i < len(es); i++ {
		if compareElements(&es[i-1], &es[i]) > 0 {
			return false
		}
	}
	return true
}

func compareElements(a, b *Element) int {
	if c := comparePrefix(a.Addr, b.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Ports.Lo, b.Ports.Lo); c != 0 {
		return c
	}
	if c := cmp.Compare(a.ID.Lo, b.ID.Lo); c != 0 {
		return c
	}
	return cmp.Compare(a.Cgroup, b.Cgroup)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// direction names the keys that mean "local address" and "local port" on
// one hook: the source on output, the destination on input.
type direction struct {
	output       bool
	port, v4, v6 KeyKind
}

func directions() (out, in direction) {
	return direction{true, KeySport, KeyIPSaddr, KeyIP6Saddr}, direction{false, KeyDport, KeyIPDaddr, KeyIP6Daddr}
}

// keys is the lookup key for a set in a direction.
func (d direction) keys(s *Set) []Key {
	ks := make([]Key, len(s.Fields))
	for i, f := range s.Fields {
		switch f {
		case FieldIPv4:
			ks[i] = Key{Kind: d.v4}
		case FieldIPv6:
			ks[i] = Key{Kind: d.v6}
		case FieldProto:
			ks[i] = Key{Kind: KeyL4Proto}
		case FieldPort:
			ks[i] = Key{Kind: d.port}
		case FieldUID:
			ks[i] = Key{Kind: KeySkUID}
		case FieldGID:
			ks[i] = Key{Kind: KeySkGID}
		case FieldCgroup:
			ks[i] = Key{Kind: KeyCgroup, Level: cgLevels[s.Name]}
		}
	}
	return ks
}

type compiling struct {
	sets     *[numSets]*Set
	st       model.Settings
	rootRule bool
	stream   []model.Protocol // stream protocols the policy reserves
	tcp      bool             // the policy reserves TCP ports
}

// classify sends packets on a reserved local port to the check chain.
func (c *compiling) classify(name, hook, target string, d direction) *Chain {
	ch := &Chain{Name: name, Hook: hook}
	for _, i := range []int{setRes, setResR, setRes4, setRes6} {
		if s := c.sets[i]; s != nil {
			ch.Rules = append(ch.Rules, Rule{Lookup{d.keys(s), s}, Verdict{Kind: Goto, Chain: target}})
		}
	}
	return ch
}

var ownerSets = []int{setOwnUID, setOwnUIDR, setOwnGID, setOwnGIDR, setOwn4UID, setOwn4GID, setOwn6UID, setOwn6GID}

// owners are the matches that recognise an owner's socket, each the head
// of one rule.
func (c *compiling) owners(d direction) []Rule {
	var rs []Rule
	if c.rootRule {
		rs = append(rs, Rule{SkUIDIs{0}})
	}
	for _, i := range ownerSets {
		if s := c.sets[i]; s != nil {
			rs = append(rs, Rule{Lookup{d.keys(s), s}})
		}
	}
	return rs
}

// cgroupOwners are the matches that recognise a socket of an owner
// cgroup (or one below it), one per level and kind of set in use. On
// input the socket is the one the kernel's lookup finds for the packet, so
// they match for unconnected UDP sockets and for a TCP SYN's listener too,
// unlike meta skuid; they never match request sockets or TIME_WAIT.
func (c *compiling) cgroupOwners(d direction) []Rule {
	var rs []Rule
	for i := setOwnCg; i < numSets; i++ {
		if s := c.sets[i]; s != nil {
			rs = append(rs, Rule{Lookup{d.keys(s), s}})
		}
	}
	return rs
}

// ownedFastPath accepts the packets of stream connections an owner's
// socket already spoke on. It starts by unmarking a TCP SYN: conntrack
// reopens the entry of a connection an owner aborted with a reset (state
// CLOSE, mark kept) for a new SYN on the same addresses and ports, and that
// new connection must not inherit OWNED: a squatter that bound the port
// meanwhile would be accepted as the owner (found by an attacker's review;
// TestReopenedConnection). Its SYN-ACK, attributed to whoever listens,
// marks the connection again.
func (c *compiling) ownedFastPath() []Rule {
	var rs []Rule
	if c.tcp {
		rs = append(rs, Rule{Match{Field: MatchTCPFlags, Mask: TCPFin | TCPSyn | TCPRst | TCPAck, Value: TCPSyn},
			CtMarkSet{Clear: c.st.MarkOwned | c.st.MarkSquatted}})
	}
	for _, p := range c.stream {
		rs = append(rs, Rule{Match{Field: MatchL4Proto, Value: uint32(p)}, CtMarkHas{c.st.MarkOwned}, Verdict{Kind: Accept}})
	}
	return rs
}

// outCheck decides for a packet leaving from a reserved port. The order is
// the sound one from DESIGN.md, measured to close the syncookie, orphan and
// UDP co-bind holes:
//
//  1. stream (TCP): a SYN is unmarked (a new connection inherits nothing);
//     the connection is OWNED (an owner's socket spoke on it): accept. This comes before the squatter test because accept()
//     gives a connection's socket the accepting process's credentials
//     (nginx's workers), and it is the fast path for established traffic.
//     Datagram protocols have no accept(), so they get no such path: a
//     non-owner's packet is dropped even on an OWNED flow (a squatter that
//     co-binds with SO_REUSEADDR, or binds after the owner stopped, while
//     the flow's conntrack entry lives on).
//  2. attributed to an owner: mark the connection OWNED (and not
//     SQUATTED); accept.
//  3. attributed to anyone else: mark it SQUATTED (and not OWNED, so later
//     datagrams of the flow are dropped on input); drop (counted, logged).
//  4. an unattributed TCP RST passes (kernel resets carry no data).
//  5. anything else unattributed is dropped: a squatter can force its
//     SYN-ACKs to be syncookies, and orphaned sockets carry no owner.
func (c *compiling) outCheck(d direction) *Chain {
	st := c.st
	ch := &Chain{Name: ChainOutCheck, Rules: c.ownedFastPath()}
	for _, r := range append(c.owners(d), c.cgroupOwners(d)...) {
		ch.Rules = append(ch.Rules, append(r, CtMarkSet{Set: st.MarkOwned, Clear: st.MarkSquatted}, Verdict{Kind: Accept}))
	}
	if c.tcp {
		for _, i := range cgOnlySets {
			if s := c.sets[i]; s != nil {
				ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPFlags, Mask: TCPFin | TCPSyn | TCPRst | TCPAck, Value: TCPSyn | TCPAck}, Lookup{d.keys(s), s}, Verdict{Kind: Jump, Chain: ChainOutSynAck}})
			}
		}
	}
	ch.Rules = append(ch.Rules, Rule{Attributed{}, CtMarkSet{Set: st.MarkSquatted, Clear: st.MarkOwned}, Verdict{Kind: Goto, Chain: ChainOutDrop}})
	if c.tcp {
		ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPFlags, Mask: TCPRst, Not: true}, Verdict{Kind: Accept}})
	}
	ch.Rules = append(ch.Rules, Rule{Verdict{Kind: Goto, Chain: ChainOutDrop}})
	return ch
}

// inCheck decides for a packet arriving on a reserved port. A socket is
// attached on input only when early demux finds an established (TCP) or
// connected (UDP) one, so most packets are unattributed here:
//
//  1. stream: a SYN is unmarked, OWNED connections pass (as on output).
//  2. TCP: a SYN that carries data (TCP Fast Open) is dropped: the kernel
//     would queue the data on a squatter's listener before its SYN-ACK
//     could be dropped. The client sends the SYN again without data.
//  3. attributed to an owner: accept; to a cgroup owner (the socket the
//     kernel's lookup finds is in an owner cgroup): mark OWNED, accept;
//     on a reservation only cgroups own, any other full socket found is a
//     squatter's: mark SQUATTED, drop (exact for UDP and for a SYN's
//     listener); attributed to anyone else: mark SQUATTED, drop (a
//     squatter's connected UDP socket steals a flow from the owner's).
//  4. datagram flows an owner answered (OWNED) pass; flows a squatter
//     answered (SQUATTED) are dropped; new flows pass, and a squatter's
//     reply is dropped on output.
func (c *compiling) inCheck(d direction) *Chain {
	st := c.st
	ch := &Chain{Name: ChainInCheck, Rules: c.ownedFastPath()}
	if c.tcp {
		ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPFlags, Mask: TCPFin | TCPSyn | TCPRst | TCPAck, Value: TCPSyn}, Verdict{Kind: Jump, Chain: ChainInSyn}})
	}
	for _, r := range c.owners(d) {
		ch.Rules = append(ch.Rules, append(r, Verdict{Kind: Accept}))
	}
	// A cgroup owner's socket found for a TCP SYN is its listener: marking
	// the connection OWNED here lets the SYN-ACK out, which comes from a
	// request socket that no cgroup rule can match.
	for _, r := range c.cgroupOwners(d) {
		ch.Rules = append(ch.Rules, append(r, CtMarkSet{Set: st.MarkOwned, Clear: st.MarkSquatted}, Verdict{Kind: Accept}))
	}
	for _, i := range cgOnlySets {
		if s := c.sets[i]; s != nil {
			ch.Rules = append(ch.Rules, Rule{Lookup{d.keys(s), s}, SocketFull{}, CtMarkSet{Set: st.MarkSquatted, Clear: st.MarkOwned}, Verdict{Kind: Goto, Chain: ChainInDrop}})
		}
	}
	if c.tcp {
		for _, i := range cgOnlySets {
			if s := c.sets[i]; s != nil {
				ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPFlags, Mask: TCPFin | TCPSyn | TCPRst | TCPAck, Value: TCPAck}, Lookup{d.keys(s), s}, Verdict{Kind: Jump, Chain: ChainInAck}})
			}
		}
	}
	ch.Rules = append(ch.Rules,
		Rule{Attributed{}, CtMarkSet{Set: st.MarkSquatted, Clear: st.MarkOwned}, Verdict{Kind: Goto, Chain: ChainInDrop}},
		Rule{CtMarkHas{st.MarkOwned}, Verdict{Kind: Accept}},
		Rule{CtMarkHas{st.MarkSquatted}, Verdict{Kind: Goto, Chain: ChainInDrop}})
	return ch
}

var cgOnlySets = []int{setCgOnly, setCgOnlyR, setCg4Only, setCg6Only}

// synAckChain lets out a SYN-ACK of a request socket on a port only
// cgroups own, which no cgroup rule can match (it is not a full socket).
// Its SYN was not marked OWNED on input because the kernel's lookup found
// a TIME_WAIT socket (a client reconnecting from the same port while the
// owner's side of the last connection waits), which matches nothing
// either. It is safe: on such a port every full socket a packet reaches
// on input is an owner's or the packet is dropped, so a squatter's
// listener that got such a SYN gets a handshake and never a byte of
// data. A full socket's SYN-ACK goes back to the checks.
func synAckChain() *Chain {
	return &Chain{Name: ChainOutSynAck, Rules: []Rule{
		{SocketFull{}, Verdict{Kind: Return}},
		{Verdict{Kind: Accept}},
	}}
}

// ackChain lets in the handshake's ACK to a request socket on a port only
// cgroups own, when it carries no data: the connection of a SYN that found
// a TIME_WAIT socket (see synAckChain) is not OWNED, and meta skuid
// attributes the ACK to the listener, whose uid owns nothing. The new
// connection's first data finds its full socket, which the cgroup rules
// judge, so a squatter's listener that got such a SYN reads nothing. An
// ACK that carries data, or reaches a full socket, goes back to the
// checks. (IPv4 options or IPv6 extension headers make the lengths
// differ, so such an ACK goes back too.)
func ackChain() *Chain {
	ch := &Chain{Name: ChainInAck, Rules: []Rule{{SocketFull{}, Verdict{Kind: Return}}}}
	accept := Verdict{Kind: Accept}
	for doff := uint32(5); doff <= 15; doff++ {
		ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPDoff, Value: doff}, Match{Field: MatchIPLength, Value: 20 + 4*doff}, accept})
	}
	for doff := uint32(5); doff <= 15; doff++ {
		ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPDoff, Value: doff}, Match{Field: MatchIP6Length, Value: 4 * doff}, accept})
	}
	return ch
}

// synChain drops a TCP SYN to a reserved port that carries data. nftables
// cannot do arithmetic on header fields, so "data" is every length but the
// one the headers account for, one rule per TCP header length. A SYN with
// IPv4 options or IPv6 extension headers is dropped too: it may carry data
// that these rules cannot see (such SYNs do not occur in practice).
func synChain() *Chain {
	ch := &Chain{Name: ChainInSyn}
	drop := Verdict{Kind: Goto, Chain: ChainInDrop}
	ch.Rules = append(ch.Rules, Rule{Match{Field: MatchIPHdrLen, Not: true, Value: 5}, drop})
	for doff := uint32(5); doff <= 15; doff++ {
		ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPDoff, Value: doff}, Match{Field: MatchIPLength, Not: true, Value: 20 + 4*doff}, drop})
	}
	ch.Rules = append(ch.Rules, Rule{Match{Field: MatchIP6Nexthdr, Not: true, Value: uint32(model.TCP)}, drop})
	for doff := uint32(5); doff <= 15; doff++ {
		ch.Rules = append(ch.Rules, Rule{Match{Field: MatchTCPDoff, Value: doff}, Match{Field: MatchIP6Length, Not: true, Value: 4 * doff}, drop})
	}
	return ch
}

// dropChain logs (rate-limited), counts and drops. A dropped packet's
// protocol . port is added to the direction's count set, whose elements
// each carry a counter: the kernel keeps counters only for the keys it
// dropped, and status and metrics attribute them to reservations through
// the membership sets (Summarize). (Counters on every element of sets as
// large as the membership sets were half the kernel's work of loading a
// table.) Should a count set be full, the update fails, the rule does not
// match, and the chain's last rule drops the packet uncounted: it fails
// closed. The address-scoped reservations' drops are counted on the
// elements of their drop sets (see CountSize).
func (c *compiling) dropChain(name, prefix string, d direction) *Chain {
	ch := &Chain{Name: name}
	if c.st.Log.Enabled() {
		ch.Rules = append(ch.Rules, Rule{LimitLog{Rate: c.st.Log, Prefix: prefix}})
	}
	dir := pick(!d.output, 0, 1)
	for _, m := range []int{setRes, setResR} {
		if s := c.sets[m]; s != nil {
			cnt := c.sets[dropSets[m][dir]]
			ch.Rules = append(ch.Rules, Rule{Lookup{d.keys(s), s}, Update{d.keys(cnt), cnt}, Verdict{Kind: Drop}})
		}
	}
	for _, m := range []int{setRes4, setRes6} {
		if s := c.sets[dropSets[m][dir]]; s != nil {
			ch.Rules = append(ch.Rules, Rule{Lookup{d.keys(s), s}, Verdict{Kind: Drop}})
		}
	}
	ch.Rules = append(ch.Rules, Rule{Verdict{Kind: Drop}})
	return ch
}

// Version identifies what Compile makes of a policy. portfw records a digest
// of the resolved policy and this Version after each commit, and trusts the
// kernel's table to be what it would compile now when both match; so any
// change to Compile's output for the same policy must come with a new
// Version. TestVersion fails when the goldens change and Version does not.
const Version = 9
