package model

import (
	"cmp"
	"errors"
	"slices"
	"strconv"
	"strings"
)

var errUnknownProtocol = errors.New("unknown protocol")

// PortRange is an inclusive range of ports, Lo <= Hi. A single port has
// Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

// Port is the range holding the one port p.
func Port(p uint16) PortRange { return PortRange{p, p} }

func (r PortRange) String() string { return string(appendRange(nil, uint64(r.Lo), uint64(r.Hi))) }

// AppendTo appends String's text to b.
func (r PortRange) AppendTo(b []byte) []byte { return appendRange(b, uint64(r.Lo), uint64(r.Hi)) }

// appendRange appends "lo" or "lo-hi".
func appendRange(b []byte, lo, hi uint64) []byte {
	b = strconv.AppendUint(b, lo, 10)
	if lo != hi {
		b = append(b, '-')
		b = strconv.AppendUint(b, hi, 10)
	}
	return b
}

// Contains reports whether p is in the range.
func (r PortRange) Contains(p uint16) bool { return r.Lo <= p && p <= r.Hi }

// Len is the number of ports in the range.
func (r PortRange) Len() int { return int(r.Hi) - int(r.Lo) + 1 }

// IDRange is an inclusive range of uids or gids, Lo <= Hi.
type IDRange struct{ Lo, Hi uint32 }

// ID is the range holding the one id.
func ID(id uint32) IDRange { return IDRange{id, id} }

func (r IDRange) String() string { return string(appendRange(nil, uint64(r.Lo), uint64(r.Hi))) }

// AppendTo appends String's text to b.
func (r IDRange) AppendTo(b []byte) []byte { return appendRange(b, uint64(r.Lo), uint64(r.Hi)) }

// Contains reports whether id is in the range.
func (r IDRange) Contains(id uint32) bool { return r.Lo <= id && id <= r.Hi }

// MaxID is the largest uid or gid: 4294967295 is (uid_t)-1, which the kernel
// uses for "no id".
const MaxID = 4294967294

// Pos is a place in a policy file. The zero Pos means "no place" (for
// entries portfw makes itself, such as the root-only guard).
type Pos struct {
	File      string
	Line, Col int
}

func (p Pos) String() string {
	return p.File + ":" + strconv.Itoa(p.Line) + ":" + strconv.Itoa(p.Col)
}

// Ports is a set of port ranges. Canonical Ports (from NewPorts) are sorted
// with overlapping and adjacent ranges merged, so two equal sets are equal
// slices.
type Ports []PortRange

// NewPorts returns the canonical form of rs.
func NewPorts(rs ...PortRange) Ports { return Ports(mergeRanges(rs, 1)) }

// ParsePorts reads the kernel's port list format ("1,2,10-20"; empty is
// none), as ip_local_reserved_ports holds it.
func ParsePorts(s string) (Ports, error) {
	var out []PortRange
	for _, f := range strings.Split(strings.TrimSpace(s), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		l, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		h := l
		if err == nil && isRange {
			h, err = strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		}
		if err != nil || h < l {
			return nil, errors.New("parse port list " + strconv.Quote(s) + ": bad entry " + strconv.Quote(f))
		}
		out = append(out, PortRange{uint16(l), uint16(h)})
	}
	return NewPorts(out...), nil
}

// String writes the set in the kernel's port list format: "8080,30000-30999".
func (ps Ports) String() string { return string(ps.AppendTo(nil)) }

// AppendTo appends String's text to b.
func (ps Ports) AppendTo(b []byte) []byte {
	for i, r := range ps {
		if i > 0 {
			b = append(b, ',')
		}
		b = r.AppendTo(b)
	}
	return b
}

// MarshalText writes the kernel's format, for the state file.
func (ps Ports) MarshalText() ([]byte, error) { return []byte(ps.String()), nil }

// UnmarshalText reads the kernel's format.
func (ps *Ports) UnmarshalText(b []byte) error {
	v, err := ParsePorts(string(b))
	*ps = v
	return err
}

// Union returns the canonical union of the two sets.
func (ps Ports) Union(o Ports) Ports { return NewPorts(append(slices.Clone(ps), o...)...) }

// Minus returns the ports of ps that are in no range of o.
func (ps Ports) Minus(o Ports) Ports {
	var out []PortRange
	o = NewPorts(o...)
	for _, r := range NewPorts(ps...) {
		lo := int(r.Lo)
		for _, x := range o {
			if int(x.Hi) < lo || int(x.Lo) > int(r.Hi) {
				continue
			}
			if int(x.Lo) > lo {
				out = append(out, PortRange{uint16(lo), x.Lo - 1})
			}
			lo = int(x.Hi) + 1
		}
		if lo <= int(r.Hi) {
			out = append(out, PortRange{uint16(lo), r.Hi})
		}
	}
	return Ports(out)
}

// Intersect returns the ports in both sets.
func (ps Ports) Intersect(o Ports) Ports { return ps.Minus(ps.Minus(o)) }

// Count is the number of ports in the set.
func (ps Ports) Count() int {
	n := 0
	for _, r := range NewPorts(ps...) {
		n += r.Len()
	}
	return n
}

// MergeIDs sorts ranges and merges those that overlap or touch: one
// representation for equal sets of ids, for comparing owners.
func MergeIDs(rs []IDRange) []IDRange { return mergeIDs(rs, 1) }

// ExactIDs sorts ranges and merges only those that overlap. Values listed one
// by one stay exact: the compiler keeps exact values in hash sets and only
// true ranges in (costlier) interval sets.
func ExactIDs(rs []IDRange) []IDRange { return mergeIDs(rs, 0) }

// ExactPorts is ExactIDs for ports.
func ExactPorts(rs []PortRange) []PortRange { return mergeRanges(rs, 0) }

func mergeIDs(rs []IDRange, touch uint64) []IDRange {
	if len(rs) <= 1 {
		return slices.Clone(rs) // the common case, without sorting
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b IDRange) int { return cmp.Or(cmp.Compare(a.Lo, b.Lo), cmp.Compare(a.Hi, b.Hi)) })
	var out []IDRange
	for _, r := range rs {
		if n := len(out); n > 0 && uint64(r.Lo) <= uint64(out[n-1].Hi)+touch {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

func mergeRanges(rs []PortRange, touch int) []PortRange {
	if len(rs) <= 1 {
		return slices.Clone(rs)
	}
	if merged(rs, touch) {
		return slices.Clone(rs)
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b PortRange) int { return cmp.Or(cmp.Compare(a.Lo, b.Lo), cmp.Compare(a.Hi, b.Hi)) })
	var out []PortRange
	for _, r := range rs {
		if n := len(out); n > 0 && int(r.Lo) <= int(out[n-1].Hi)+touch {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// merged reports whether rs is sorted and no two ranges overlap (or touch,
// with touch 1): mergeRanges would return it as is.
func merged(rs []PortRange, touch int) bool {
	for i := 1; i < len(rs); i++ {
		if int(rs[i].Lo) <= int(rs[i-1].Hi)+touch {
			return false
		}
	}
	return true
}

// MinusIDs returns the ids of a that are in no range of b, merged.
func MinusIDs(a, b []IDRange) []IDRange {
	var out []IDRange
	b = MergeIDs(b)
	for _, r := range MergeIDs(a) {
		lo := uint64(r.Lo)
		for _, x := range b {
			if uint64(x.Hi) < lo || x.Lo > r.Hi {
				continue
			}
			if uint64(x.Lo) > lo {
				out = append(out, IDRange{uint32(lo), x.Lo - 1})
			}
			lo = uint64(x.Hi) + 1
		}
		if lo <= uint64(r.Hi) {
			out = append(out, IDRange{uint32(lo), r.Hi})
		}
	}
	return out
}

// ContainsID reports whether id is in one of rs.
func ContainsID(rs []IDRange, id uint32) bool {
	for _, r := range rs {
		if r.Contains(id) {
			return true
		}
	}
	return false
}
