package compiler

import (
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
)

// Changes is what applying one ruleset over another changes, in the
// admin's terms: reservations added, removed or changed, and whether the
// rules (settings: root, marks, log) differ.
type Changes struct {
	Added        []string // reservation names, sorted
	Removed      []string
	Changed      []string
	RulesChanged bool // chains or set declarations differ
	// Unlabelled counts the elements in the kernel that name no
	// reservation (added by hand); apply removes them. Plan lists them.
	Unlabelled int

	src *planSource // what Plan works from
}

// InSync reports whether nothing would change.
func (c Changes) InSync() bool {
	return len(c.Added)+len(c.Removed)+len(c.Changed) == 0 && !c.RulesChanged && c.Unlabelled == 0
}

// Diff compares the ruleset in the kernel (old; nil when there is no
// table) with the one to apply (new).
func Diff(old, new *Ruleset) Changes {
	c := Changes{src: &planSource{oldRS: old, newRS: new}}
	if old == nil {
		// Everything is added: the names are all there is to find (no
		// element maps of a 100k table to compare with nothing).
		seen := map[string]bool{}
		for _, s := range new.Sets {
			for _, e := range s.Elements {
				if !seen[e.Comment] {
					seen[e.Comment] = true
					c.Added = append(c.Added, e.Comment)
				}
			}
		}
		slices.Sort(c.Added)
		c.RulesChanged = true
		return c
	}
	oldRes, newRes := byReservation(old), byReservation(new)
	c.Unlabelled = len(oldRes[""])
	delete(oldRes, "")
	for name, elems := range newRes {
		prev, ok := oldRes[name]
		switch {
		case !ok:
			c.Added = append(c.Added, name)
		case !sameElements(prev, elems):
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

// Created is Diff(nil, rs) for rs compiled from r: the changes of creating
// the table where there is none. Its Plan works each reservation's detail
// out from r, without grouping the table's elements by reservation (at
// 100k reservations that was half a second).
func Created(r *model.Resolved, rs *Ruleset) Changes {
	// The names from r, not from rs's elements (a map of 100k comments
	// over 200k elements was a tenth of a second): every reservation with
	// a port puts elements in the reserved sets (TestCreatedPlan).
	c := Changes{src: &planSource{newRS: rs, newM: r}, RulesChanged: true}
	for _, res := range r.All() {
		if len(res.Ports) > 0 && len(res.Protocols) > 0 {
			c.Added = append(c.Added, res.Name)
		}
	}
	slices.Sort(c.Added) // sorted already but for the guard's entries
	c.Added = slices.Compact(c.Added)
	return c
}

// elemKey identifies an element of a set by value: comparable, so maps of
// 10k-reservation tables cost no formatting.
type elemKey struct {
	set string
	e   Element // Comment and counters zeroed
}

func keyOf(set string, e Element) elemKey { return elemKey{set, e.Key()} }

// byReservation groups the elements of rs by the reservation they belong
// to (their comment; elements without one are grouped under "").
func byReservation(rs *Ruleset) map[string]map[elemKey]bool {
	m := map[string]map[elemKey]bool{}
	if rs == nil {
		return m
	}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			if m[e.Comment] == nil {
				m[e.Comment] = map[elemKey]bool{}
			}
			m[e.Comment][keyOf(s.Name, e)] = true
		}
	}
	return m
}

func sameElements(a, b map[elemKey]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// skeleton is the text form without elements: what changes only when the
// rules or the kinds of set in use change.
func skeleton(rs *Ruleset) string {
	var b strings.Builder
	for _, s := range rs.Sets {
		b.WriteString("set " + s.Name + " ")
		writeFields(&b, s)
		b.WriteString("\n")
		if s.Interval {
			b.WriteString(" interval\n")
		}
		if s.Counter {
			b.WriteString(" counter\n")
		}
		if s.Dynamic {
			b.WriteString(" dynamic " + strconv.Itoa(int(s.Size())) + "\n")
		}
	}
	for _, c := range rs.Chains {
		writeChain(&b, c)
	}
	return b.String()
}
