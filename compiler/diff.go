package compiler

import (
	"slices"
	"strings"
)

// Changes is what applying one ruleset over another changes, in the
// admin's terms: reservations added, removed or changed, and whether the
// rules (settings: root, marks, log) differ.
type Changes struct {
	Added        []string `json:"added"` // reservation names, sorted
	Removed      []string `json:"removed"`
	Changed      []string `json:"changed"`
	RulesChanged bool     `json:"rules_changed"` // chains or set declarations differ
}

// InSync reports whether nothing would change.
func (c Changes) InSync() bool {
	return len(c.Added)+len(c.Removed)+len(c.Changed) == 0 && !c.RulesChanged
}

// Diff compares the ruleset in the kernel (old; nil when there is no
// table) with the one to apply (new).
func Diff(old, new *Ruleset) Changes {
	var c Changes
	oldRes, newRes := Reservations(old), Reservations(new)
	for name, elems := range newRes {
		prev, ok := oldRes[name]
		switch {
		case !ok:
			c.Added = append(c.Added, name)
		case !slices.Equal(prev, elems):
			c.Changed = append(c.Changed, name)
		}
	}
	for name := range oldRes {
		if _, ok := newRes[name]; !ok {
			c.Removed = append(c.Removed, name)
		}
	}
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	slices.Sort(c.Changed)
	c.RulesChanged = old == nil || skeleton(old) != skeleton(new)
	return c
}

// Reservations groups the elements of rs by the reservation they belong
// to (their comment), as sorted "set: element" lines. Elements without a
// comment are grouped under "".
func Reservations(rs *Ruleset) map[string][]string {
	m := map[string][]string{}
	if rs == nil {
		return m
	}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			c := e.Comment
			e.Comment = ""
			m[c] = append(m[c], s.Name+": "+s.ElementText(e))
		}
	}
	for _, v := range m {
		slices.Sort(v)
	}
	return m
}

// skeleton is the text form without elements: what changes only when the
// rules or the kinds of set in use change.
func skeleton(rs *Ruleset) string {
	var b strings.Builder
	for _, s := range rs.Sets {
		b.WriteString("set " + s.Name + " " + strings.Join(fieldNames(s), ".") + "\n")
		if s.Interval {
			b.WriteString(" interval\n")
		}
		if s.Counter {
			b.WriteString(" counter\n")
		}
	}
	for _, c := range rs.Chains {
		writeChain(&b, c)
	}
	return b.String()
}

func fieldNames(s *Set) []string {
	n := make([]string, len(s.Fields))
	for i, f := range s.Fields {
		n[i] = f.NftType()
	}
	return n
}
