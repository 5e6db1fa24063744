package compiler

import (
	"cmp"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"

	"github.com/portfw/portfw/internal/parallel"
	"github.com/portfw/portfw/model"
)

// Plan says in the admin's terms what a Changes does: for each reservation
// added, removed or changed, the ports (by protocol), addresses and owners
// it gains or loses; the elements in the kernel that belong to no
// reservation (added by hand); and the rule and setting changes, in words.
// It is worked out only when asked for (Changes.Plan): a daemon reloading
// 10k reservations never needs it.
type Plan struct {
	Reservations []Detail // by name
	Unlabelled   []Stray  // in set order, then element order
	Rules        []string
}

// Detail is what a change does to one reservation. For an added one
// everything is "added", for a removed one "removed".
type Detail struct {
	Name                             string
	Action                           Action
	PortsAdded, PortsRemoved         []ProtoPorts
	AddressesAdded, AddressesRemoved []netip.Prefix
	UIDsAdded, UIDsRemoved           []model.IDRange
	GIDsAdded, GIDsRemoved           []model.IDRange
	CgroupsAdded, CgroupsRemoved     []CgroupRef
	// ElementsAdded and ElementsRemoved count the elements that differ
	// when nothing above does: a table edited by hand (one of a
	// reservation's drop elements deleted, say).
	ElementsAdded, ElementsRemoved int
}

// CgroupRef is an owner cgroup: its id, and its path when the policy
// side of the change names it ("" for one only the kernel's table holds).
type CgroupRef struct {
	ID   uint64
	Path string
}

func (c CgroupRef) String() string {
	if c.Path != "" {
		return "cgroup " + c.Path
	}
	return "cgroup id " + strconv.FormatUint(c.ID, 10)
}

// Action is what happens to a reservation.
type Action string

const (
	ActionAdd    Action = "add"
	ActionRemove Action = "remove"
	ActionChange Action = "change"
)

// ProtoPorts is ports of one protocol.
type ProtoPorts struct {
	Protocol model.Protocol
	Ports    model.Ports
}

// Stray is an element of portfw's table that names no reservation: apply
// removes it.
type Stray struct {
	Set     string
	Element Element
}

// planSource is what a Plan is worked out from: the two rulesets (the
// kernel's and the policy's), or the two resolved policies, or both.
type planSource struct {
	oldRS, newRS *Ruleset
	oldM, newM   *model.Resolved

	once sync.Once
	plan Plan
}

// Plan works out what the changes do (see Plan), once: later calls, and
// calls while the first is under way (apply starts one beside its commit),
// return the first's Plan, which the callers share and must not change.
// Changes made by hand (not by Diff, Compare or Change) have no plan.
func (c Changes) Plan() Plan {
	src := c.src
	if src == nil {
		return Plan{}
	}
	src.once.Do(func() { src.plan = c.makePlan() })
	return src.plan
}

func (c Changes) makePlan() Plan {
	var p Plan
	src := c.src
	var olds, news map[string][]setElement
	created := src.oldRS == nil && src.newRS != nil && src.newM != nil // see Created
	switch {
	case created:
	case src.oldRS != nil || src.newRS != nil:
		olds, news = groupElements(src.oldRS), groupElements(src.newRS)
		p.Unlabelled = strays(src.oldRS)
	default:
		olds, news = modelElements(src.oldM, c), modelElements(src.newM, c)
	}
	paths := cgroupPaths(src)
	type job struct {
		name string
		a    Action
	}
	jobs := make([]job, 0, len(c.Added)+len(c.Removed)+len(c.Changed))
	for _, list := range []struct {
		names []string
		a     Action
	}{{c.Added, ActionAdd}, {c.Removed, ActionRemove}, {c.Changed, ActionChange}} {
		for _, n := range list.names {
			jobs = append(jobs, job{n, list.a})
		}
	}
	// Each reservation's detail is its own (the maps above are only
	// read): worked out on every CPU, in chunks, as a fresh apply of 100k
	// prints them once the kernel's commit is through.
	p.Reservations = make([]Detail, len(jobs))
	const chunk = 1024
	parallel.Each(runtime.GOMAXPROCS(0), (len(jobs)+chunk-1)/chunk, func(_, k int) error {
		for i := k * chunk; i < min(len(jobs), (k+1)*chunk); i++ {
			n, a := jobs[i].name, jobs[i].a
			var d Detail
			if created {
				d = detailOf(n, a, footprint{}, modelFootprint(reservationsNamed(src.newM, n), src.newM.Settings.AllowRoot), nil, nil)
			} else {
				d = detail(n, a, olds[n], news[n])
			}
			for _, cs := range [][]CgroupRef{d.CgroupsAdded, d.CgroupsRemoved} {
				for i := range cs {
					cs[i].Path = paths[cs[i].ID]
				}
			}
			p.Reservations[i] = d
		}
		return nil
	})
	slices.SortFunc(p.Reservations, func(a, b Detail) int { return cmp.Compare(a.Name, b.Name) })
	if src.oldM != nil && src.newM != nil {
		p.Rules = settingChanges(src.oldM.Settings, src.newM.Settings)
	}
	if c.RulesChanged {
		p.Rules = append(p.Rules, ruleChanges(src.oldRS, src.newRS)...)
	}
	return p
}

// cgroupPaths names the cgroup ids the policy side knows.
func cgroupPaths(src *planSource) map[uint64]string {
	m := map[uint64]string{}
	for _, r := range []*model.Resolved{src.oldM, src.newM} {
		if r == nil {
			continue
		}
		for _, res := range r.Reservations {
			for _, c := range res.Owners.Live() {
				m[c.ID] = c.Path
			}
		}
	}
	for _, rs := range []*Ruleset{src.oldRS, src.newRS} {
		if rs == nil {
			continue
		}
		for _, s := range rs.Sets {
			if !s.Has(FieldCgroup) {
				continue
			}
			for _, e := range s.Elements {
				if e.CgroupPath != "" {
					m[e.Cgroup] = e.CgroupPath
				}
			}
		}
	}
	return m
}

// setElement is an element (of a ruleset, or compiled for the plan) and
// the set it is in.
type setElement struct {
	set string
	e   *Element
}

// groupElements groups a ruleset's elements by reservation (comment).
// The elements are counted first and placed in one array, each
// reservation's in a window of it (appending to 10k growing slices was a
// third of a fresh apply's Plan).
func groupElements(rs *Ruleset) map[string][]setElement {
	m := map[string][]setElement{}
	if rs == nil {
		return m
	}
	counts := map[string]int{}
	total := 0
	for _, s := range rs.Sets {
		for i := range s.Elements {
			counts[s.Elements[i].Comment]++
		}
		total += len(s.Elements)
	}
	all := make([]setElement, total)
	off := 0
	for name, n := range counts {
		m[name] = all[off : off : off+n]
		off += n
	}
	for _, s := range rs.Sets {
		for i := range s.Elements {
			e := &s.Elements[i]
			m[e.Comment] = append(m[e.Comment], setElement{s.Name, e})
		}
	}
	return m
}

// reservationsNamed are the reservations of r that compile to elements
// commented name: the root-only guard's for model.GuardName.
func reservationsNamed(r *model.Resolved, name string) []*model.Reservation {
	var out []*model.Reservation
	if name == model.GuardName {
		for i := range r.Guard {
			out = append(out, &r.Guard[i])
		}
	} else if i, ok := sort.Find(len(r.Reservations), func(i int) int { return cmp.Compare(name, r.Reservations[i].Name) }); ok {
		out = append(out, &r.Reservations[i])
	}
	return out
}

// modelElements compiles the reservations c names, as Compile would.
func modelElements(r *model.Resolved, c Changes) map[string][]setElement {
	m := map[string][]setElement{}
	if r == nil {
		return m
	}
	var all []*model.Reservation
	for _, names := range [][]string{c.Added, c.Removed, c.Changed} {
		for _, n := range names {
			all = append(all, reservationsNamed(r, n)...)
		}
	}
	for _, res := range all {
		eachElement(res, r.Settings.AllowRoot, func(set int, e Element) {
			m[res.Name] = append(m[res.Name], setElement{specs[set].name, &e})
		})
	}
	return m
}

// strays are the elements of rs that name no reservation.
func strays(rs *Ruleset) []Stray {
	var out []Stray
	if rs == nil {
		return nil
	}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			if e.Comment == "" {
				out = append(out, Stray{s.Name, e.Key()})
			}
		}
	}
	return out
}

// footprint is what a reservation's elements say it is.
type footprint struct {
	ports      protoPorts
	addrs      []netip.Prefix
	uids, gids []model.IDRange
	cgroups    []uint64
}

// setKinds says what each set's elements say: a reserved (protocol, port,
// address), or an owner.
var setKinds = func() map[string]int {
	m := map[string]int{}
	for i, sp := range specs {
		switch i {
		case setRes, setResR, setRes4, setRes6:
			m[sp.name] = kindReserved
		case setOwnUID, setOwnUIDR, setOwn4UID, setOwn6UID:
			m[sp.name] = kindUID
		case setOwnGID, setOwnGIDR, setOwn4GID, setOwn6GID:
			m[sp.name] = kindGID
		}
		if i >= setOwnCg {
			m[sp.name] = kindCgroup
		}
	}
	return m
}()

const (
	kindOther = iota
	kindReserved
	kindUID
	kindGID
	kindCgroup
)

// protoPorts is ports by protocol: a list, as a reservation has few.
type protoPorts []ProtoPorts

func (pp protoPorts) of(p model.Protocol) model.Ports {
	for _, x := range pp {
		if x.Protocol == p {
			return x.Ports
		}
	}
	return nil
}

func (pp *protoPorts) add(p model.Protocol, r model.PortRange) {
	for i := range *pp {
		if (*pp)[i].Protocol == p {
			(*pp)[i].Ports = append((*pp)[i].Ports, r)
			return
		}
	}
	*pp = append(*pp, ProtoPorts{p, model.Ports{r}})
}

func footprintOf(es []setElement) footprint {
	var f footprint
	for _, se := range es {
		f.add(setKinds[se.set], se.e)
	}
	return f.normal()
}

// setKindOf is setKinds by set index.
var setKindOf = func() (k [numSets]int) {
	for i, sp := range specs {
		k[i] = setKinds[sp.name]
	}
	return k
}()

// modelFootprint is the footprint of the elements the reservations
// compile to (eachElement, as Compile), without making a list of them.
func modelFootprint(rs []*model.Reservation, rootRule bool) footprint {
	var f footprint
	for _, res := range rs {
		eachElement(res, rootRule, func(set int, e Element) { f.add(setKindOf[set], &e) })
	}
	return f.normal()
}

func (f *footprint) add(kind int, e *Element) {
	switch kind {
	case kindReserved:
		f.ports.add(e.Proto, e.Ports)
		if e.Addr.IsValid() {
			f.addrs = append(f.addrs, e.Addr)
		}
	case kindUID:
		f.uids = append(f.uids, e.ID)
	case kindGID:
		f.gids = append(f.gids, e.ID)
	case kindCgroup:
		f.cgroups = append(f.cgroups, e.Cgroup)
	}
}

// normal sorts and merges what add collected.
func (f footprint) normal() footprint {
	slices.Sort(f.cgroups)
	f.cgroups = slices.Compact(f.cgroups)
	for i := range f.ports {
		f.ports[i].Ports = model.NewPorts(f.ports[i].Ports...)
	}
	f.addrs = uniquePrefixes(f.addrs)
	f.uids, f.gids = model.MergeIDs(f.uids), model.MergeIDs(f.gids)
	return f
}

func uniquePrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return slices.Compact(ps)
}

func detail(name string, a Action, olds, news []setElement) Detail {
	return detailOf(name, a, footprintOf(olds), footprintOf(news), olds, news)
}

// detailOf is detail from the footprints of olds and news (the element
// lists are needed only for a change in nothing the footprints show).
func detailOf(name string, a Action, o, n footprint, olds, news []setElement) Detail {
	d := Detail{Name: name, Action: a}
	for _, pi := range model.Protocols() {
		if add := n.ports.of(pi.Protocol).Minus(o.ports.of(pi.Protocol)); len(add) > 0 {
			d.PortsAdded = append(d.PortsAdded, ProtoPorts{pi.Protocol, add})
		}
		if del := o.ports.of(pi.Protocol).Minus(n.ports.of(pi.Protocol)); len(del) > 0 {
			d.PortsRemoved = append(d.PortsRemoved, ProtoPorts{pi.Protocol, del})
		}
	}
	d.AddressesAdded, d.AddressesRemoved = minusPrefixes(n.addrs, o.addrs), minusPrefixes(o.addrs, n.addrs)
	d.UIDsAdded, d.UIDsRemoved = model.MinusIDs(n.uids, o.uids), model.MinusIDs(o.uids, n.uids)
	d.GIDsAdded, d.GIDsRemoved = model.MinusIDs(n.gids, o.gids), model.MinusIDs(o.gids, n.gids)
	d.CgroupsAdded, d.CgroupsRemoved = minusCgroups(n.cgroups, o.cgroups), minusCgroups(o.cgroups, n.cgroups)
	if a == ActionChange && d.empty() {
		type key struct {
			set string
			e   Element
		}
		had := map[key]bool{}
		for _, se := range olds {
			had[key{se.set, se.e.Key()}] = true
		}
		for _, se := range news {
			if k := (key{se.set, se.e.Key()}); had[k] {
				delete(had, k)
			} else {
				d.ElementsAdded++
			}
		}
		d.ElementsRemoved = len(had)
	}
	return d
}

func (d Detail) empty() bool {
	return len(d.PortsAdded)+len(d.PortsRemoved)+len(d.AddressesAdded)+len(d.AddressesRemoved)+
		len(d.UIDsAdded)+len(d.UIDsRemoved)+len(d.GIDsAdded)+len(d.GIDsRemoved)+
		len(d.CgroupsAdded)+len(d.CgroupsRemoved) == 0
}

func minusCgroups(a, b []uint64) []CgroupRef {
	var out []CgroupRef
	for _, id := range a {
		if !slices.Contains(b, id) {
			out = append(out, CgroupRef{ID: id})
		}
	}
	return out
}

func minusPrefixes(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range a {
		if !slices.Contains(b, p) {
			out = append(out, p)
		}
	}
	return out
}

// settingChanges says which settings the rules depend on differ.
func settingChanges(a, b model.Settings) []string {
	var out []string
	if a.Table != b.Table {
		out = append(out, fmt.Sprintf("settings.table: %s -> %s (the old table is removed)", a.Table, b.Table))
	}
	if a.AllowRoot != b.AllowRoot {
		out = append(out, fmt.Sprintf("settings.allow_root: %v -> %v", a.AllowRoot, b.AllowRoot))
	}
	if a.Log != b.Log {
		out = append(out, fmt.Sprintf("settings.log: %s -> %s", logText(a.Log), logText(b.Log)))
	}
	if a.MarkOwned != b.MarkOwned {
		out = append(out, fmt.Sprintf("settings.marks.owned: %#08x -> %#08x", a.MarkOwned, b.MarkOwned))
	}
	if a.MarkSquatted != b.MarkSquatted {
		out = append(out, fmt.Sprintf("settings.marks.squatted: %#08x -> %#08x", a.MarkSquatted, b.MarkSquatted))
	}
	return out
}

func logText(l model.LogRate) string {
	if !l.Enabled() {
		return "off"
	}
	return "rate " + l.String()
}

// ruleChanges says how two rulesets differ in anything but elements: the
// sets and chains created or deleted, and the rules each chain gains or
// loses, as nft writes them.
func ruleChanges(old, new *Ruleset) []string {
	if new == nil {
		return nil
	}
	if old == nil {
		return []string{fmt.Sprintf("table inet %s is created", new.Table)}
	}
	var out []string
	if old.Table != new.Table {
		out = append(out, fmt.Sprintf("table inet %s is replaced by table inet %s", old.Table, new.Table))
	}
	oldSets := map[string]*Set{}
	for _, s := range old.Sets {
		oldSets[s.Name] = s
	}
	for _, s := range new.Sets {
		switch o := oldSets[s.Name]; {
		case o == nil:
			out = append(out, "set "+s.Name+" is created")
		case !slices.Equal(o.Fields, s.Fields) || o.Interval != s.Interval || o.Counter != s.Counter || o.Dynamic != s.Dynamic || (s.Dynamic && o.Size() != s.Size()):
			out = append(out, "set "+s.Name+" is declared anew")
		}
		delete(oldSets, s.Name)
	}
	for _, s := range old.Sets {
		if oldSets[s.Name] != nil {
			out = append(out, "set "+s.Name+" is deleted")
		}
	}
	oldChains := map[string]*Chain{}
	for _, c := range old.Chains {
		oldChains[c.Name] = c
	}
	for _, c := range new.Chains {
		o := oldChains[c.Name]
		delete(oldChains, c.Name)
		if o == nil {
			out = append(out, "chain "+c.Name+" is created")
			continue
		}
		if o.Hook != c.Hook {
			out = append(out, fmt.Sprintf("chain %s: hook %q -> %q", c.Name, o.Hook, c.Hook))
		}
		had := map[string]int{}
		for _, r := range o.Rules {
			had[RuleText(r)]++
		}
		var added []string
		for _, r := range c.Rules {
			t := RuleText(r)
			if had[t] > 0 {
				had[t]--
			} else {
				added = append(added, t)
			}
		}
		for _, r := range o.Rules {
			if t := RuleText(r); had[t] > 0 {
				had[t]--
				out = append(out, fmt.Sprintf("chain %s: - %s", c.Name, t))
			}
		}
		for _, t := range added {
			out = append(out, fmt.Sprintf("chain %s: + %s", c.Name, t))
		}
		if len(added) == 0 && len(o.Rules) == len(c.Rules) && !slices.EqualFunc(o.Rules, c.Rules, func(a, b Rule) bool { return RuleText(a) == RuleText(b) }) {
			out = append(out, fmt.Sprintf("chain %s: its rules are reordered", c.Name))
		}
	}
	for _, c := range old.Chains {
		if oldChains[c.Name] != nil {
			out = append(out, "chain "+c.Name+" is deleted")
		}
	}
	return out
}

// String is the detail in one line, as diff prints it after "+ ", "- "
// or "~ ": "web: +8443/tcp, owners +uid 1001 -gid 2000".
func (d Detail) String() string { return string(d.AppendTo(nil)) }

// AppendTo appends String's text to b: a fresh apply prints one line per
// reservation, 10k of them in about 2 ms this way (20-25 ms built from
// strings).
func (d Detail) AppendTo(b []byte) []byte {
	b = append(b, d.Name...)
	parts := 0
	part := func(label string) {
		if parts == 0 {
			b = append(b, ": "...)
		} else {
			b = append(b, ", "...)
		}
		parts++
		b = append(b, label...)
	}
	sign := func(s byte) {
		if d.Action == ActionChange {
			b = append(b, s)
		}
	}
	if len(d.PortsAdded) > 0 {
		part("")
		sign('+')
		b = appendPorts(b, d.PortsAdded)
	}
	if len(d.PortsRemoved) > 0 {
		if len(d.PortsAdded) > 0 {
			b = append(b, ", "...)
		} else {
			part("")
		}
		sign('-')
		b = appendPorts(b, d.PortsRemoved)
	}
	n := 0
	sep := func(label string, s byte) {
		if n == 0 {
			part(label)
		} else {
			b = append(b, ' ')
		}
		n++
		sign(s)
	}
	for _, a := range d.AddressesAdded {
		sep("addresses ", '+')
		b = a.AppendTo(b)
	}
	for _, a := range d.AddressesRemoved {
		sep("addresses ", '-')
		b = a.AppendTo(b)
	}
	n = 0
	for _, o := range [...]struct {
		sign byte
		kind string
		ids  []model.IDRange
	}{{'+', "uid ", d.UIDsAdded}, {'-', "uid ", d.UIDsRemoved}, {'+', "gid ", d.GIDsAdded}, {'-', "gid ", d.GIDsRemoved}} {
		if len(o.ids) > 0 {
			sep("owners ", o.sign)
			b = append(b, o.kind...)
			for i, r := range o.ids {
				if i > 0 {
					b = append(b, ',')
				}
				b = r.AppendTo(b)
			}
		}
	}
	for _, c := range d.CgroupsAdded {
		sep("owners ", '+')
		b = append(b, c.String()...)
	}
	for _, c := range d.CgroupsRemoved {
		sep("owners ", '-')
		b = append(b, c.String()...)
	}
	if d.ElementsAdded+d.ElementsRemoved > 0 {
		part(fmt.Sprintf("the kernel's elements were edited by hand (%d to restore, %d to remove)", d.ElementsAdded, d.ElementsRemoved))
	}
	return b
}

// appendPorts appends ports by protocol, protocols with the same ports
// together: "80,443/tcp+udp, 8443/tcp".
func appendPorts(b []byte, pps []ProtoPorts) []byte {
	for i, pp := range pps {
		if slices.ContainsFunc(pps[:i], func(o ProtoPorts) bool { return slices.Equal(o.Ports, pp.Ports) }) {
			continue // written with the first protocol of the same ports
		}
		if i > 0 {
			b = append(b, ", "...)
		}
		b = pp.Ports.AppendTo(b)
		b = append(b, '/')
		b = append(b, pp.Protocol.String()...)
		for _, o := range pps[i+1:] {
			if slices.Equal(o.Ports, pp.Ports) {
				b = append(b, '+')
				b = append(b, o.Protocol.String()...)
			}
		}
	}
	return b
}

// String is the element as nft writes it, with its set:
// "own_uid { tcp . 80 . 65534 }".
func (s Stray) String() string {
	decl := declaration(s.Set)
	if decl == nil {
		return s.Set + " { ? }"
	}
	return s.Set + " { " + decl.ElementText(s.Element) + " }"
}
