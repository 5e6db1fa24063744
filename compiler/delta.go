package compiler

// Delta is a change between two rulesets that differ only in set
// elements: the elements to delete and to add, per set. Applied as one
// transaction it leaves rules, chains and the counters of every untouched
// element as they were.
type Delta struct {
	Table    string
	Sets     map[string]*Set // the sets' declarations, by name
	Del, Add map[string][]Element
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool { return len(d.Del)+len(d.Add) == 0 }

// ElementDelta returns the element changes that turn old into new, and
// false when the two differ in anything but elements (rules, settings, the
// kinds of set in use): those need the whole table replaced.
func ElementDelta(old, new *Ruleset) (Delta, bool) {
	if old == nil || old.Table != new.Table || skeleton(old) != skeleton(new) {
		return Delta{}, false
	}
	d := Delta{Table: new.Table, Sets: map[string]*Set{}, Del: map[string][]Element{}, Add: map[string][]Element{}}
	// An element is its value and its comment: one whose reservation was
	// renamed is deleted and added again.
	key := func(e Element) Element { e.Packets, e.Bytes = 0, 0; return e }
	for i, ns := range new.Sets {
		os := old.Sets[i]
		d.Sets[ns.Name] = ns
		had := make(map[Element]bool, len(os.Elements))
		for _, e := range os.Elements {
			had[key(e)] = true
		}
		has := make(map[Element]bool, len(ns.Elements))
		for _, e := range ns.Elements {
			has[key(e)] = true
			if !had[key(e)] {
				d.Add[ns.Name] = append(d.Add[ns.Name], e)
			}
		}
		for _, e := range os.Elements {
			if !has[key(e)] {
				d.Del[ns.Name] = append(d.Del[ns.Name], key(e))
			}
		}
	}
	return d, true
}
