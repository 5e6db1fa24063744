package compiler

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
)

// Ruleset is one nftables table of family inet, fully described. Sets and
// chains are in the order they are created; elements are sorted.
type Ruleset struct {
	Table  string
	Sets   []*Set
	Chains []*Chain
}

// Field is one component of a set key: the datatype of a value.
type Field uint8

const (
	FieldIPv4   Field = iota // local IPv4 address (prefix in interval sets)
	FieldIPv6                // local IPv6 address
	FieldProto               // meta l4proto
	FieldPort                // local port
	FieldUID                 // meta skuid
	FieldGID                 // meta skgid
	FieldCgroup              // socket cgroupv2: a cgroup id, 8 bytes
)

var fieldTypes = [...]string{"ipv4_addr", "ipv6_addr", "inet_proto", "inet_service", "uid", "gid", "cgroupsv2"}

// NftType is the nft datatype name of the field.
func (f Field) NftType() string { return fieldTypes[f] }

// Set is a named set. Keys are concatenations of Fields.
type Set struct {
	Name     string
	Fields   []Field
	Interval bool // a range in some element; lookups cost more, keep it small
	Counter  bool // every element carries a counter
	// Dynamic sets get their elements from the packet path (a count set:
	// the keys of dropped packets, see dropChain). They compile empty, and
	// what the kernel added reads back as Counts, never as Elements, so
	// comparisons with a policy and deltas leave them alone.
	Dynamic  bool
	Elements []Element
	Counts   []Element // a dynamic set's elements as read back, with their counters
	// MadeSize is the size the kernel says a dynamic set was made with,
	// when read back (0 in compiled sets): a count set's size is fixed,
	// so another one is a difference from the policy.
	MadeSize uint32
}

// Capacity is the size a set of n exact elements is made with: room to
// double (at least 256), so that the deltas of edits and restarts fit and a
// growing policy is replaced once per doubling (an element delta past it
// fails, nft.ErrFull). Given a size, the kernel makes a hash of fixed
// buckets (nft_hash; 4/3 of the size, rounded up to a power of two, 1 MiB
// for the 20k elements of a 10k-reservation set) instead of its resizable
// one (nft_rhash), whose growth and rehashing while a big table went in
// were a quarter of the kernel's time for it (perf, docs/performance.md).
// Interval sets have no size. It is not part of Set: the kernel reports
// the size a set was made with, not what a policy compiles to now.
func Capacity(n int) uint32 {
	c := uint32(256)
	for int64(c) < 2*int64(n) && c < 1<<30 {
		c *= 2
	}
	return c
}

// Size is the size the set is made with: its Capacity; for a count set
// CountSize (read back, MadeSize); 0 (none) for an interval set.
func (s *Set) Size() uint32 {
	switch {
	case s.Interval:
		return 0
	case s.Dynamic && s.MadeSize != 0:
		return s.MadeSize
	case s.Dynamic:
		return CountSize
	}
	return Capacity(len(s.Elements))
}

// Has reports whether the set's key includes f.
func (s *Set) Has(f Field) bool {
	for _, x := range s.Fields {
		if x == f {
			return true
		}
	}
	return false
}

// Element is one set element. Only the fields the set's key has are
// meaningful. Addr is a prefix (a /32 or /128 for one address); Ports and
// ID are single values in hash sets and may be ranges in interval sets.
type Element struct {
	Addr  netip.Prefix
	Proto model.Protocol
	Ports model.PortRange
	ID    model.IDRange
	// Cgroup is a cgroup id, for sets keyed by FieldCgroup; CgroupPath is
	// its path from the hierarchy's root when known (compiled elements),
	// for the text form only: the kernel holds the id alone.
	Cgroup     uint64
	CgroupPath string
	// Comment names the reservation the element belongs to. It is kept in
	// the kernel, so the table explains itself (`nft list table`) and
	// status and diff work per reservation without the policy file.
	Comment string
	// Packets and Bytes are the element's counter as read back from the
	// kernel (package nft). Compile never sets them and the text form
	// leaves them out, so a table read back compares equal to its policy.
	Packets, Bytes uint64
}

// Key identifies an element within its set: the element without its
// comment and counters. It is comparable, for maps of elements.
func (e Element) Key() Element {
	e.Comment, e.CgroupPath, e.Packets, e.Bytes = "", "", 0, 0
	return e
}

// Chain is a base chain (Hook set) or a regular chain. Base chains are
// filter chains at priority filter (0) with policy accept: portfw only
// ever drops what it recognises and never decides for traffic it does not
// own. (Accept is not final across tables: another table's chain on the
// same hook still sees what portfw accepts.)
type Chain struct {
	Name  string
	Hook  string // "input" or "output"; empty for a regular chain
	Rules []Rule
}

// Rule is a sequence of expressions: matches first, then statements, the
// verdict last.
type Rule []Expr

// Expr is one of the expression types below. The set is closed on purpose:
// each has a text form here and a netlink form in package nft, and nothing
// else is needed to express the datapath.
type Expr interface{ text(b *strings.Builder) }

// KeyKind is a value loaded from the packet or its socket.
type KeyKind uint8

const (
	KeyL4Proto  KeyKind = iota // meta l4proto
	KeySport                   // th sport
	KeyDport                   // th dport
	KeySkUID                   // meta skuid
	KeySkGID                   // meta skgid
	KeyIPSaddr                 // ip saddr
	KeyIPDaddr                 // ip daddr
	KeyIP6Saddr                // ip6 saddr
	KeyIP6Daddr                // ip6 daddr
	KeyCgroup                  // socket cgroupv2 level N: the socket's ancestor cgroup at Level
)

var keyTexts = [...]string{"meta l4proto", "th sport", "th dport", "meta skuid", "meta skgid",
	"ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr", "socket cgroupv2 level "}

// Key is one component of a lookup key. Level is a parameter for the kinds
// that take one (an ancestor level of the socket's cgroup); zero otherwise.
type Key struct {
	Kind  KeyKind
	Level uint8
}

func (k Key) String() string {
	if k.Kind == KeyCgroup {
		return keyTexts[k.Kind] + strconv.Itoa(int(k.Level))
	}
	return keyTexts[k.Kind]
}

// Field is the datatype the key loads, which the set's key must have.
func (k Key) Field() Field {
	switch k.Kind {
	case KeyL4Proto:
		return FieldProto
	case KeySport, KeyDport:
		return FieldPort
	case KeySkUID:
		return FieldUID
	case KeySkGID:
		return FieldGID
	case KeyIPSaddr, KeyIPDaddr:
		return FieldIPv4
	case KeyCgroup:
		return FieldCgroup
	}
	return FieldIPv6
}

// Lookup matches when the concatenation of Keys is in Set.
type Lookup struct {
	Keys []Key
	Set  *Set
}

// Update adds the concatenation of Keys to the dynamic Set, or finds it
// there, and counts the packet on its counter. It does not match when the
// set is full.
type Update struct {
	Keys []Key
	Set  *Set
}

// CtMarkHas matches when the connection's mark has Bit set.
type CtMarkHas struct{ Bit uint32 }

// CtMarkSet sets the bits Set of the connection's mark and clears the bits
// Clear, preserving every other bit.
type CtMarkSet struct{ Set, Clear uint32 }

// SkUIDIs matches packets whose socket was created by UID.
type SkUIDIs struct{ UID uint32 }

// Attributed matches packets that carry a full socket with a file, i.e.
// whose meta skuid can be read at all. Unattributed packets (syncookie
// SYN-ACKs, orphaned sockets, TIME_WAIT, kernel RSTs) never match it.
// It is written `meta skuid != 4294967295`: the kernel reports unmapped
// uids as the overflow uid, never as -1, so every attributed packet matches.
type Attributed struct{}

// SocketFull matches packets whose socket (on input the one the kernel's
// lookup finds for the packet, which is exact) is a full socket: not a
// request socket, not TIME_WAIT. It is written `socket wildcard <= 1`:
// the kernel reads that key of full sockets only.
type SocketFull struct{}

// Match compares a header field of the packet with Value: the field (masked
// with Mask, when not zero) equals Value, or with Not set differs from it.
type Match struct {
	Field MatchField
	Mask  uint32
	Not   bool
	Value uint32
}

// MatchField is a header field Match can read.
type MatchField uint8

const (
	MatchL4Proto    MatchField = iota // meta l4proto
	MatchTCPFlags                     // tcp flags
	MatchTCPDoff                      // tcp doff: the header length in 32-bit words
	MatchIPHdrLen                     // ip hdrlength: the header length in 32-bit words
	MatchIPLength                     // ip length: the whole packet, header included
	MatchIP6Nexthdr                   // ip6 nexthdr
	MatchIP6Length                    // ip6 length: the payload after the fixed header
)

var matchTexts = [...]string{"meta l4proto", "tcp flags", "tcp doff", "ip hdrlength", "ip length", "ip6 nexthdr", "ip6 length"}

// TCP flag bits, as in the header.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// LimitLog logs at most Rate packets to the kernel log with Prefix and the
// socket's uid.
type LimitLog struct {
	Rate   model.LogRate
	Prefix string
}

// VerdictKind is how a rule ends.
type VerdictKind uint8

const (
	Accept VerdictKind = iota
	Drop
	Goto   // continue in Chain, never to return
	Jump   // continue in Chain, then here if it decides nothing
	Return // back to the rule after the jump
)

// Verdict ends the rule.
type Verdict struct {
	Kind  VerdictKind
	Chain string // for Goto and Jump
}

// Unknown stands for expressions that the kernel holds in portfw's table
// but that portfw never writes (someone edited the table). It only occurs
// in rulesets read back from the kernel, so that a diff shows the edit.
type Unknown struct{ Desc string }

func hex32(b *strings.Builder, v uint32) {
	s := strconv.FormatUint(uint64(v), 16)
	b.WriteString("0x")
	b.WriteString(strings.Repeat("0", 8-len(s)))
	b.WriteString(s)
}

func (l Lookup) text(b *strings.Builder) {
	for i, k := range l.Keys {
		if i > 0 {
			b.WriteString(" . ")
		}
		b.WriteString(k.String())
	}
	b.WriteString(" @")
	b.WriteString(l.Set.Name)
}

func (u Update) text(b *strings.Builder) {
	b.WriteString("update @")
	b.WriteString(u.Set.Name)
	b.WriteString(" { ")
	for i, k := range u.Keys {
		if i > 0 {
			b.WriteString(" . ")
		}
		b.WriteString(k.String())
	}
	b.WriteString(" }")
}

func (c CtMarkHas) text(b *strings.Builder) {
	b.WriteString("ct mark & ")
	hex32(b, c.Bit)
	b.WriteString(" == ")
	hex32(b, c.Bit)
}

// text writes what `nft list` prints for the statement: the mask it shows
// is the kernel's mask with the set bits added back (a | b is encoded as
// (x & ~b) ^ b), which is ^Clear.
func (c CtMarkSet) text(b *strings.Builder) {
	b.WriteString("ct mark set ct mark")
	if c.Clear != 0 {
		b.WriteString(" & ")
		hex32(b, ^c.Clear)
	}
	if c.Set != 0 || c.Clear == 0 {
		b.WriteString(" | ")
		hex32(b, c.Set)
	}
}

func (s SkUIDIs) text(b *strings.Builder) {
	b.WriteString("meta skuid ")
	b.WriteString(strconv.FormatUint(uint64(s.UID), 10))
}

func (Attributed) text(b *strings.Builder) { b.WriteString("meta skuid != 4294967295") }

func (SocketFull) text(b *strings.Builder) { b.WriteString("socket wildcard <= 1") }

var tcpFlagNames = []struct {
	bit  uint32
	name string
}{{TCPFin, "fin"}, {TCPSyn, "syn"}, {TCPRst, "rst"}, {0x08, "psh"}, {TCPAck, "ack"}, {0x20, "urg"}, {0x40, "ecn"}, {0x80, "cwr"}}

func flagNames(v uint32) string {
	var names []string
	for _, f := range tcpFlagNames {
		if v&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return strings.Join(names, ",")
}

// text writes the match as `nft list` prints it.
func (m Match) text(b *strings.Builder) {
	b.WriteString(matchTexts[m.Field])
	b.WriteByte(' ')
	if m.Field == MatchTCPFlags {
		switch {
		case m.Not && m.Value == 0 && m.Mask != 0: // any of the mask's flags
			b.WriteString(flagNames(m.Mask))
		default:
			if m.Not {
				b.WriteString("!= ")
			}
			b.WriteString(flagNames(m.Value))
			if m.Mask != 0 {
				b.WriteString(" / ")
				b.WriteString(flagNames(m.Mask))
			}
		}
		return
	}
	if m.Not {
		b.WriteString("!= ")
	}
	switch m.Field {
	case MatchL4Proto, MatchIP6Nexthdr:
		b.WriteString(model.Protocol(m.Value).String())
	default:
		b.WriteString(strconv.FormatUint(uint64(m.Value), 10))
	}
}

func (l LimitLog) text(b *strings.Builder) {
	b.WriteString("limit rate ")
	b.WriteString(l.Rate.String())
	b.WriteString(" log prefix ")
	b.WriteString(strconv.Quote(l.Prefix))
	b.WriteString(" flags skuid")
}

func (v Verdict) text(b *strings.Builder) {
	switch v.Kind {
	case Accept:
		b.WriteString("accept")
	case Drop:
		b.WriteString("drop")
	case Goto:
		b.WriteString("goto " + v.Chain)
	case Jump:
		b.WriteString("jump " + v.Chain)
	case Return:
		b.WriteString("return")
	}
}

func (u Unknown) text(b *strings.Builder) { b.WriteString("# not written by portfw: " + u.Desc) }

// String is the canonical text form: valid input for `nft -f`, the output
// of `portfw compile`, and what golden tests compare. It creates the table
// if missing and then replaces its contents, so loading it is idempotent.
func (r *Ruleset) String() string {
	var b strings.Builder
	b.WriteString("table inet " + r.Table + "\n")
	b.WriteString("delete table inet " + r.Table + "\n")
	b.WriteString("table inet " + r.Table + " {\n")
	for i, s := range r.Sets {
		if i > 0 {
			b.WriteString("\n")
		}
		writeSet(&b, s)
	}
	for _, c := range r.Chains {
		b.WriteString("\n")
		writeChain(&b, c)
	}
	b.WriteString("}\n")
	return b.String()
}

func writeSet(b *strings.Builder, s *Set) {
	b.WriteString("\tset " + s.Name + " {\n")
	b.WriteString("\t\ttype ")
	writeFields(b, s)
	b.WriteString("\n")
	if s.Interval {
		b.WriteString("\t\tflags interval\n")
	} else {
		b.WriteString("\t\tsize " + strconv.Itoa(int(s.Size())) + "\n")
	}
	if s.Dynamic {
		b.WriteString("\t\tflags dynamic\n")
	}
	if s.Counter {
		b.WriteString("\t\tcounter\n")
	}
	if len(s.Elements) == 0 { // a count set; an owner set of cgroups whose owners wait
		b.WriteString("\t}\n")
		return
	}
	b.WriteString("\t\telements = {\n")
	// Compiled sets are sorted; sets read from the kernel come in its
	// order, and print in the canonical one.
	elems := s.Elements
	if !sortedElements(elems) {
		elems = slices.Clone(elems)
		SortElements(elems)
	}
	for i, e := range elems {
		b.WriteString("\t\t\t")
		s.writeElement(b, e)
		if i < len(elems)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("\t\t}\n\t}\n")
}

func writeFields(b *strings.Builder, s *Set) {
	for i, f := range s.Fields {
		if i > 0 {
			b.WriteString(" . ")
		}
		b.WriteString(f.NftType())
	}
}

// ElementText is the nft text of one element of s.
func (s *Set) ElementText(e Element) string {
	var b strings.Builder
	s.writeElement(&b, e)
	return b.String()
}

func (s *Set) writeElement(b *strings.Builder, e Element) {
	for i, f := range s.Fields {
		if i > 0 {
			b.WriteString(" . ")
		}
		switch f {
		case FieldIPv4, FieldIPv6:
			if e.Addr.IsSingleIP() {
				b.WriteString(e.Addr.Addr().String())
			} else {
				b.WriteString(e.Addr.String())
			}
		case FieldProto:
			b.WriteString(e.Proto.String())
		case FieldPort:
			b.WriteString(e.Ports.String())
		case FieldUID, FieldGID:
			b.WriteString(e.ID.String())
		case FieldCgroup:
			// nft takes a path from /sys/fs/cgroup (where cgroup v2 is
			// mounted on most hosts) and prints the id when it cannot
			// find the path.
			if e.CgroupPath != "" {
				b.WriteString(strconv.Quote(strings.TrimPrefix(e.CgroupPath, "/")))
			} else {
				b.WriteString(strconv.FormatUint(e.Cgroup, 10))
			}
		}
	}
	if e.Comment != "" {
		b.WriteString(" comment ")
		b.WriteString(strconv.Quote(e.Comment))
	}
}

func writeChain(b *strings.Builder, c *Chain) {
	b.WriteString("\tchain " + c.Name + " {\n")
	if c.Hook != "" {
		b.WriteString("\t\ttype filter hook " + c.Hook + " priority filter; policy accept;\n")
	}
	for _, r := range c.Rules {
		b.WriteString("\t\t")
		writeRule(b, r)
		b.WriteString("\n")
	}
	b.WriteString("\t}\n")
}

func writeRule(b *strings.Builder, r Rule) {
	for i, e := range r {
		if i > 0 {
			b.WriteByte(' ')
		}
		e.text(b)
	}
}

// RuleText is the text of one rule, for messages.
func RuleText(r Rule) string {
	var b strings.Builder
	writeRule(&b, r)
	return b.String()
}
