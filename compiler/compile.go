package compiler

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/portfw/portfw/policy"
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
	counter  bool
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
	setDrop
	setDropR
	setDrop4
	setDrop6
	numSets
)

var specs = [numSets]setSpec{
	setRes:     {"res_port", pp, false, false},
	setResR:    {"res_port_r", pp, true, false},
	setRes4:    {"res4", pp4, true, false},
	setRes6:    {"res6", pp6, true, false},
	setOwnUID:  {"own_uid", ppU, false, false},
	setOwnUIDR: {"own_uid_r", ppU, true, false},
	setOwnGID:  {"own_gid", ppG, false, false},
	setOwnGIDR: {"own_gid_r", ppG, true, false},
	setOwn4UID: {"own4_uid", pp4U, true, false},
	setOwn4GID: {"own4_gid", pp4G, true, false},
	setOwn6UID: {"own6_uid", pp6U, true, false},
	setOwn6GID: {"own6_gid", pp6G, true, false},
	setDrop:    {"drop_port", pp, false, true},
	setDropR:   {"drop_port_r", pp, true, true},
	setDrop4:   {"drop4", pp4, true, true},
	setDrop6:   {"drop6", pp6, true, true},
}

// Chain names. The base chains only classify (is the local port
// reserved?); the check chains decide; the drop chains log, count, drop.
const (
	ChainOutput   = "output"
	ChainInput    = "input"
	ChainOutCheck = "out_check"
	ChainInCheck  = "in_check"
	ChainOutDrop  = "out_drop"
	ChainInDrop   = "in_drop"
)

// LogPrefixOut and LogPrefixIn start every kernel log line portfw writes.
const (
	LogPrefixOut = "portfw: drop out "
	LogPrefixIn  = "portfw: drop in "
)

// Compile turns a resolved policy into the ruleset that enforces it. It is
// pure and deterministic. r must satisfy the invariants documented on
// policy.Resolved.
func Compile(r *policy.Resolved) *Ruleset {
	var elems [numSets][]Element
	for _, res := range r.Reservations {
		addElements(&elems, &res)
	}
	for _, g := range r.Guard {
		addElements(&elems, &g)
	}
	var sets [numSets]*Set
	rs := &Ruleset{Table: r.Settings.Table}
	for i, e := range elems {
		if len(e) == 0 {
			continue
		}
		SortElements(e)
		sp := specs[i]
		sets[i] = &Set{Name: sp.name, Fields: sp.fields, Interval: sp.interval, Counter: sp.counter, Elements: e}
		rs.Sets = append(rs.Sets, sets[i])
	}
	out, in := directions()
	rs.Chains = []*Chain{
		classify(ChainOutput, "output", ChainOutCheck, out, &sets),
		classify(ChainInput, "input", ChainInCheck, in, &sets),
		check(ChainOutCheck, ChainOutDrop, out, &sets, r.Settings),
		check(ChainInCheck, ChainInDrop, in, &sets, r.Settings),
		dropChain(ChainOutDrop, LogPrefixOut, out, &sets, r.Settings),
		dropChain(ChainInDrop, LogPrefixIn, in, &sets, r.Settings),
	}
	return rs
}

func addElements(elems *[numSets][]Element, res *policy.Reservation) {
	add := func(set int, e Element) { elems[set] = append(elems[set], e) }
	for _, proto := range res.Protocols {
		for _, ports := range res.Ports {
			portRange := ports.Lo != ports.Hi
			if len(res.Addresses) == 0 {
				e := Element{Proto: proto, Ports: ports, Comment: res.Name}
				membership, drop := setRes, setDrop
				if portRange {
					membership, drop = setResR, setDropR
				}
				add(membership, e)
				add(drop, e)
				for _, id := range res.UIDs {
					e.ID = id
					add(pick(portRange || id.Lo != id.Hi, setOwnUID, setOwnUIDR), e)
				}
				for _, id := range res.GIDs {
					e.ID = id
					add(pick(portRange || id.Lo != id.Hi, setOwnGID, setOwnGIDR), e)
				}
				continue
			}
			for _, addr := range res.Addresses {
				membership, drop, ownU, ownG := setRes4, setDrop4, setOwn4UID, setOwn4GID
				if addr.Addr().Is6() {
					membership, drop, ownU, ownG = setRes6, setDrop6, setOwn6UID, setOwn6GID
				}
				e := Element{Addr: addr, Proto: proto, Ports: ports, Comment: res.Name}
				add(membership, e)
				add(drop, e)
				for _, id := range res.UIDs {
					e.ID = id
					add(ownU, e)
				}
				for _, id := range res.GIDs {
					e.ID = id
					add(ownG, e)
				}
			}
		}
	}
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
func SortElements(es []Element) {
	slices.SortFunc(es, func(a, b Element) int {
		if c := comparePrefix(a.Addr, b.Addr); c != 0 {
			return c
		}
		return cmp.Or(
			cmp.Compare(a.Proto, b.Proto),
			cmp.Compare(a.Ports.Lo, b.Ports.Lo),
			cmp.Compare(a.ID.Lo, b.ID.Lo),
		)
	})
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
	port, v4, v6 Key
}

func directions() (out, in direction) {
	return direction{KeySport, KeyIPSaddr, KeyIP6Saddr}, direction{KeyDport, KeyIPDaddr, KeyIP6Daddr}
}

// keys is the lookup key for a set in a direction.
func (d direction) keys(s *Set) []Key {
	var ks []Key
	for _, f := range s.Fields {
		switch f {
		case FieldIPv4:
			ks = append(ks, d.v4)
		case FieldIPv6:
			ks = append(ks, d.v6)
		case FieldProto:
			ks = append(ks, KeyL4Proto)
		case FieldPort:
			ks = append(ks, d.port)
		case FieldUID:
			ks = append(ks, KeySkUID)
		case FieldGID:
			ks = append(ks, KeySkGID)
		}
	}
	return ks
}

// classify sends packets on a reserved local port to the check chain.
func classify(name, hook, target string, d direction, sets *[numSets]*Set) *Chain {
	c := &Chain{Name: name, Hook: hook}
	for _, i := range []int{setRes, setResR, setRes4, setRes6} {
		if s := sets[i]; s != nil {
			c.Rules = append(c.Rules, Rule{Lookup{d.keys(s), s}, Verdict{Kind: "goto", Chain: target}})
		}
	}
	return c
}

var ownerSets = []int{setOwnUID, setOwnUIDR, setOwnGID, setOwnGIDR, setOwn4UID, setOwn4GID, setOwn6UID, setOwn6GID}

// check decides for a packet on a reserved port. The order is the sound
// one from DESIGN.md, measured to close the syncookie and orphan holes:
//
//   - the connection is OWNED (an owner's socket spoke on it): accept. This
//     comes before the squatter test because accept() gives a connection's
//     socket the accepting process's credentials (nginx workers), and it is
//     the cheap fast path for established traffic;
//   - attributed to an owner: on output mark the connection OWNED; accept;
//   - attributed to anyone else: mark it SQUATTED; drop (counted, logged);
//   - on output, an unattributed TCP RST passes (kernel resets carry no
//     data); anything else unattributed is dropped: a squatter can force
//     its SYN-ACKs to be syncookies, which carry no socket;
//   - on input, unattributed packets of a SQUATTED connection are dropped
//     and the rest pass (a new connection's SYN has no socket yet).
func check(name, drop string, d direction, sets *[numSets]*Set, st policy.Settings) *Chain {
	output := d.port == KeySport
	owned := func(r Rule) Rule {
		if output {
			r = append(r, CtMarkSet{st.MarkOwned})
		}
		return append(r, Verdict{Kind: "accept"})
	}
	c := &Chain{Name: name}
	c.Rules = append(c.Rules, Rule{CtMarkHas{st.MarkOwned}, Verdict{Kind: "accept"}})
	if st.AllowRoot {
		c.Rules = append(c.Rules, owned(Rule{SkUIDIs{0}}))
	}
	for _, i := range ownerSets {
		if s := sets[i]; s != nil {
			c.Rules = append(c.Rules, owned(Rule{Lookup{d.keys(s), s}}))
		}
	}
	c.Rules = append(c.Rules, Rule{Attributed{}, CtMarkSet{st.MarkSquatted}, Verdict{Kind: "goto", Chain: drop}})
	if output {
		c.Rules = append(c.Rules,
			Rule{TCPRst{}, Verdict{Kind: "accept"}},
			Rule{Verdict{Kind: "goto", Chain: drop}})
	} else {
		c.Rules = append(c.Rules, Rule{CtMarkHas{st.MarkSquatted}, Verdict{Kind: "goto", Chain: drop}})
	}
	return c
}

// dropChain logs (rate-limited), counts per reservation and drops. The
// counters live on elements of the drop sets, looked up only here, so they
// count dropped packets alone and cost nothing on traffic that passes.
func dropChain(name, prefix string, d direction, sets *[numSets]*Set, st policy.Settings) *Chain {
	c := &Chain{Name: name}
	if st.LogRate != "" {
		c.Rules = append(c.Rules, Rule{LimitLog{Rate: st.LogRate, Prefix: prefix}})
	}
	for _, i := range []int{setDrop, setDropR, setDrop4, setDrop6} {
		if s := sets[i]; s != nil {
			c.Rules = append(c.Rules, Rule{Lookup{d.keys(s), s}, Verdict{Kind: "drop"}})
		}
	}
	c.Rules = append(c.Rules, Rule{Verdict{Kind: "drop"}})
	return c
}
