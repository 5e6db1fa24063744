package compiler

import (
	"slices"

	"github.com/portfw/portfw/model"
)

// Change is the change from the table compiled for old to the one for new,
// computed reservation by reservation: only the reservations whose content
// differs are compiled, so a one-owner edit at 10k reservations costs what
// that reservation's elements cost, not a compile and a comparison of 60k
// elements. ok is false when the table must be replaced: settings that the
// rules depend on differ, or the rules themselves would (a kind of set
// comes into use or goes out of it). The result is the same as Compare of
// the two compiled rulesets (a test checks it).
func Change(old, new *model.Resolved) (Changes, Delta, bool) {
	if !sameRules(old, new) {
		c := Diff(Compile(old), Compile(new))
		c.src.oldM, c.src.newM = old, new
		return c, Delta{}, false
	}
	rootRule := new.Settings.AllowRoot
	d := Delta{Table: new.Settings.Table, Sets: map[string]*Set{}, Del: map[string][]Element{}, Add: map[string][]Element{}}
	c := Changes{src: &planSource{oldM: old, newM: new}}
	type key struct {
		set int
		e   Element
	}
	// diff adds to d what turns the elements of olds into those of news.
	diff := func(olds, news []model.Reservation) bool {
		had := map[key]bool{}
		for i := range olds {
			eachElement(&olds[i], rootRule, func(set int, e Element) { had[key{set, e}] = true })
		}
		changed := false
		for i := range news {
			eachElement(&news[i], rootRule, func(set int, e Element) {
				if had[key{set, e}] {
					delete(had, key{set, e})
					return
				}
				name := specs[set].name
				d.Add[name] = append(d.Add[name], e)
				changed = true
			})
		}
		for k := range had {
			name := specs[k.set].name
			d.Del[name] = append(d.Del[name], k.e)
			changed = true
		}
		return changed
	}
	// The reservations are sorted by name (model.Resolved's invariant):
	// walk both lists side by side.
	olds, news := old.Reservations, new.Reservations
	for i, j := 0, 0; i < len(olds) || j < len(news); {
		switch {
		case j == len(news) || (i < len(olds) && olds[i].Name < news[j].Name):
			diff(olds[i:i+1], nil)
			c.Removed = append(c.Removed, olds[i].Name)
			i++
		case i == len(olds) || news[j].Name < olds[i].Name:
			diff(nil, news[j:j+1])
			c.Added = append(c.Added, news[j].Name)
			j++
		default:
			if !sameReservation(&olds[i], &news[j]) && diff(olds[i:i+1], news[j:j+1]) {
				c.Changed = append(c.Changed, news[j].Name)
			}
			i++
			j++
		}
	}
	// The root-only entries, one per protocol, are one name together.
	if changed := diff(old.Guard, new.Guard); changed || len(old.Guard) != len(new.Guard) {
		switch {
		case len(old.Guard) == 0 && len(new.Guard) > 0:
			c.Added = append(c.Added, model.GuardName)
		case len(new.Guard) == 0 && len(old.Guard) > 0:
			c.Removed = append(c.Removed, model.GuardName)
		case changed:
			c.Changed = append(c.Changed, model.GuardName)
		}
	}
	for name := range d.Add {
		d.Sets[name] = declaration(name)
	}
	for name, es := range d.Del {
		d.Sets[name] = declaration(name)
		SortElements(es)
	}
	for _, es := range d.Add {
		SortElements(es)
	}
	if len(d.Add) == 0 {
		d.Add = map[string][]Element{}
	}
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	slices.Sort(c.Changed)
	return c, d, true
}

// declaration is a set's declaration, without elements.
func declaration(name string) *Set {
	for _, sp := range specs {
		if sp.name == name {
			return &Set{Name: sp.name, Fields: sp.fields, Interval: sp.interval, Counter: sp.counter, Dynamic: sp.dynamic}
		}
	}
	return nil
}

// sameReservation reports whether two reservations compile to the same
// elements (names aside): the same protocols, ports, addresses and owners.
func sameReservation(a, b *model.Reservation) bool {
	return a.Name == b.Name && model.SameGeometry(a, b) && a.Owners.Root == b.Owners.Root &&
		model.Equal(a.Owners.UIDs, b.Owners.UIDs) && model.Equal(a.Owners.GIDs, b.Owners.GIDs) &&
		model.Equal(a.Owners.Cgroups, b.Owners.Cgroups)
}

// sameRules reports whether the two policies compile to the same rules and
// set declarations: the settings the rules use, and the kinds of set and
// the protocols in use.
func sameRules(a, b *model.Resolved) bool {
	sa, sb := a.Settings, b.Settings
	if sa.Table != sb.Table || sa.AllowRoot != sb.AllowRoot || sa.Log != sb.Log ||
		sa.MarkOwned != sb.MarkOwned || sa.MarkSquatted != sb.MarkSquatted {
		return false
	}
	return kinds(a) == kinds(b)
}

// usage is what a ruleset's rules depend on besides the settings: which
// sets have elements, and which stream protocols (and TCP, for the SYN
// rules) are reserved (as Compile decides them).
type usage struct {
	sets   [numSets]bool
	stream [256]bool
}

func kinds(r *model.Resolved) usage {
	var u usage
	rootRule := r.Settings.AllowRoot
	for _, res := range r.All() {
		for _, p := range res.Protocols {
			if info, _ := p.Info(); info.Stream || p == model.TCP {
				u.stream[p] = true
			}
		}
		setsOf(res, rootRule, &u.sets)
	}
	return u
}

// setsOf marks the sets res puts elements in, as eachElement would, without
// making them: a pass over 10k reservations instead of their 60k elements.
func setsOf(res *model.Reservation, rootRule bool, sets *[numSets]bool) {
	if len(res.Protocols) == 0 || len(res.Ports) == 0 {
		return
	}
	if len(res.Owners.Cgroups) > 0 { // few; their sets are many
		eachElement(res, rootRule, func(set int, _ Element) { sets[set] = true })
		for _, i := range cgroupSets(res) {
			sets[i] = true
		}
		return
	}
	uids := len(res.Owners.UIDs) > 0 || (res.Owners.Root && !rootRule)
	gids := len(res.Owners.GIDs) > 0
	if len(res.Addresses) > 0 {
		for _, a := range res.Addresses {
			if a.Addr().Is6() {
				sets[setRes6], sets[setDrop6], sets[setDropIn6] = true, true, true
				sets[setOwn6UID] = sets[setOwn6UID] || uids
				sets[setOwn6GID] = sets[setOwn6GID] || gids
			} else {
				sets[setRes4], sets[setDrop4], sets[setDropIn4] = true, true, true
				sets[setOwn4UID] = sets[setOwn4UID] || uids
				sets[setOwn4GID] = sets[setOwn4GID] || gids
			}
		}
		return
	}
	ranged := func(ids []model.IDRange) (exact, interval bool) {
		for _, id := range ids {
			if id.Lo != id.Hi {
				interval = true
			} else {
				exact = true
			}
		}
		return
	}
	uidIDs := res.Owners.UIDs
	if res.Owners.Root && !rootRule && !model.ContainsID(uidIDs, 0) {
		uidIDs = append([]model.IDRange{model.ID(0)}, uidIDs...)
	}
	ue, ui := ranged(uidIDs)
	ge, gi := ranged(res.Owners.GIDs)
	for _, p := range res.Ports {
		if p.Lo != p.Hi {
			sets[setResR] = true
			sets[setOwnUIDR] = sets[setOwnUIDR] || ue || ui
			sets[setOwnGIDR] = sets[setOwnGIDR] || ge || gi
			continue
		}
		sets[setRes] = true
		sets[setOwnUID] = sets[setOwnUID] || ue
		sets[setOwnUIDR] = sets[setOwnUIDR] || ui
		sets[setOwnGID] = sets[setOwnGID] || ge
		sets[setOwnGIDR] = sets[setOwnGIDR] || gi
	}
}
