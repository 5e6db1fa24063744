package compiler

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/portfw/portfw/policy"
)

// Ruleset is one nftables table of family inet, fully described. Sets and
// chains are in the order they are created; elements are sorted.
type Ruleset struct {
	Table  string
	Sets   []*Set
	Chains []*Chain
}

// Field is one component of a set key.
type Field int

const (
	FieldIPv4  Field = iota // local IPv4 address (prefix in interval sets)
	FieldIPv6               // local IPv6 address
	FieldProto              // meta l4proto
	FieldPort               // local port
	FieldUID                // meta skuid
	FieldGID                // meta skgid
)

// NftType is the nft datatype name of the field.
func (f Field) NftType() string {
	return [...]string{"ipv4_addr", "ipv6_addr", "inet_proto", "inet_service", "uid", "gid"}[f]
}

// Set is a named set. Keys are concatenations of Fields.
type Set struct {
	Name     string
	Fields   []Field
	Interval bool // a range in some element; lookups cost more, keep it small
	Counter  bool // every element carries a counter (drop counters)
	Elements []Element
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
	Proto policy.Protocol
	Ports policy.PortRange
	ID    policy.IDRange
	// Comment names the reservation the element belongs to. It is kept in
	// the kernel, so the table explains itself (`nft list table`) and
	// status and diff work per reservation without the policy file.
	Comment string
	// Packets and Bytes are the element's counter as read back from the
	// kernel (package nft). Compile never sets them and the text form
	// leaves them out, so a table read back compares equal to its policy.
	Packets, Bytes uint64
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
type Expr interface{ text() string }

// Key is a value loaded from the packet or its socket into a set lookup.
type Key int

const (
	KeyL4Proto  Key = iota // meta l4proto
	KeySport               // th sport
	KeyDport               // th dport
	KeySkUID               // meta skuid
	KeySkGID               // meta skgid
	KeyIPSaddr             // ip saddr
	KeyIPDaddr             // ip daddr
	KeyIP6Saddr            // ip6 saddr
	KeyIP6Daddr            // ip6 daddr
)

func (k Key) text() string {
	return [...]string{"meta l4proto", "th sport", "th dport", "meta skuid", "meta skgid",
		"ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr"}[k]
}

// Lookup matches when the concatenation of Keys is in Set.
type Lookup struct {
	Keys []Key
	Set  *Set
}

// CtMarkHas matches when the connection's mark has Bit set.
type CtMarkHas struct{ Bit uint32 }

// SkUIDIs matches packets whose socket was created by UID.
type SkUIDIs struct{ UID uint32 }

// Attributed matches packets that carry a full socket with a file, i.e.
// whose meta skuid can be read at all. Unattributed packets (syncookie
// SYN-ACKs, orphaned sockets, TIME_WAIT, kernel RSTs) never match it.
// It is written `meta skuid != 4294967295`: the kernel reports unmapped
// uids as the overflow uid, never as -1, so every attributed packet matches.
type Attributed struct{}

// TCPRst matches TCP packets with the RST flag.
type TCPRst struct{}

// CtMarkSet sets Bit in the connection's mark, preserving the other bits.
type CtMarkSet struct{ Bit uint32 }

// LimitLog logs at most Rate packets (nft syntax, "10/minute") to the
// kernel log with Prefix and the socket's uid.
type LimitLog struct{ Rate, Prefix string }

// Verdict ends the rule: "accept", "drop", or "goto" Chain.
type Verdict struct {
	Kind  string
	Chain string
}

func (l Lookup) text() string {
	parts := make([]string, len(l.Keys))
	for i, k := range l.Keys {
		parts[i] = k.text()
	}
	return strings.Join(parts, " . ") + " @" + l.Set.Name
}
func (c CtMarkHas) text() string { return fmt.Sprintf("ct mark & 0x%08x == 0x%08x", c.Bit, c.Bit) }
func (s SkUIDIs) text() string   { return fmt.Sprintf("meta skuid %d", s.UID) }
func (Attributed) text() string  { return "meta skuid != 4294967295" }
func (TCPRst) text() string      { return "tcp flags rst" }
func (c CtMarkSet) text() string { return fmt.Sprintf("ct mark set ct mark | 0x%08x", c.Bit) }
func (l LimitLog) text() string {
	return fmt.Sprintf("limit rate %s log prefix %q flags skuid", l.Rate, l.Prefix)
}
func (v Verdict) text() string {
	if v.Kind == "goto" {
		return "goto " + v.Chain
	}
	return v.Kind
}

// String is the canonical text form: valid input for `nft -f`, the output
// of `portfw compile`, and what golden tests compare. It creates the table
// if missing and then replaces its contents, so loading it is idempotent.
func (r *Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\n", r.Table)
	fmt.Fprintf(&b, "delete table inet %s\n", r.Table)
	fmt.Fprintf(&b, "table inet %s {\n", r.Table)
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
	fmt.Fprintf(b, "\tset %s {\n", s.Name)
	types := make([]string, len(s.Fields))
	for i, f := range s.Fields {
		types[i] = f.NftType()
	}
	fmt.Fprintf(b, "\t\ttype %s\n", strings.Join(types, " . "))
	if s.Interval {
		b.WriteString("\t\tflags interval\n")
	}
	if s.Counter {
		b.WriteString("\t\tcounter\n")
	}
	b.WriteString("\t\telements = {\n")
	for i, e := range s.Elements {
		b.WriteString("\t\t\t")
		b.WriteString(s.ElementText(e))
		if i < len(s.Elements)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("\t\t}\n\t}\n")
}

// ElementText is the nft text of one element of s.
func (s *Set) ElementText(e Element) string {
	parts := make([]string, 0, len(s.Fields))
	for _, f := range s.Fields {
		switch f {
		case FieldIPv4, FieldIPv6:
			if e.Addr.IsSingleIP() {
				parts = append(parts, e.Addr.Addr().String())
			} else {
				parts = append(parts, e.Addr.String())
			}
		case FieldProto:
			parts = append(parts, string(e.Proto))
		case FieldPort:
			parts = append(parts, e.Ports.String())
		case FieldUID, FieldGID:
			parts = append(parts, e.ID.String())
		}
	}
	t := strings.Join(parts, " . ")
	if e.Comment != "" {
		t += fmt.Sprintf(" comment %q", e.Comment)
	}
	return t
}

func writeChain(b *strings.Builder, c *Chain) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if c.Hook != "" {
		fmt.Fprintf(b, "\t\ttype filter hook %s priority filter; policy accept;\n", c.Hook)
	}
	for _, r := range c.Rules {
		parts := make([]string, len(r))
		for i, e := range r {
			parts[i] = e.text()
		}
		fmt.Fprintf(b, "\t\t%s\n", strings.Join(parts, " "))
	}
	b.WriteString("\t}\n")
}

// Unknown stands for expressions that the kernel holds in portfw's table
// but that portfw never writes (someone edited the table). It only occurs
// in rulesets read back from the kernel, so that a diff shows the edit.
type Unknown struct{ Desc string }

func (u Unknown) text() string { return "# not written by portfw: " + u.Desc }
