// Package resolve turns a parsed policy into the ownership model: names to
// ids through a Resolver (the only way the pipeline reads the host's user
// database), every list normalised, and the checks that need ids, such as
// two reservations claiming the same (protocol, port, address). It also
// holds the host-facing parts of reading a policy: Load (a size-capped
// read, then parse and resolve) and CheckPerms (who may change the file).
package resolve

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// Resolver turns user and group names into ids. Tests use Static.
type Resolver interface {
	// LookupUser returns the uid of a user. The error wraps ErrUnknown
	// when there is no such user; any other error means the lookup
	// itself failed (an LDAP server down, say).
	LookupUser(name string) (uid uint32, err error)
	// LookupGroup is LookupUser for groups.
	LookupGroup(name string) (gid uint32, err error)
}

// ErrUnknown is wrapped by Resolver errors for names that do not exist.
var ErrUnknown = errors.New("unknown")

// Static resolves names from fixed maps; a name missing from a map is
// unknown. It is for tests.
type Static struct {
	Users, Groups map[string]uint32
	Cgroups       Cgroups // nil: the policy may not name units or cgroups
}

var _ Resolver = Static{}

func (s Static) LookupUser(name string) (uint32, error) {
	if id, ok := s.Users[name]; ok {
		return id, nil
	}
	return 0, fmt.Errorf("user %q: %w", name, ErrUnknown)
}

func (s Static) LookupGroup(name string) (uint32, error) {
	if id, ok := s.Groups[name]; ok {
		return id, nil
	}
	return 0, fmt.Errorf("group %q: %w", name, ErrUnknown)
}

// Resolve turns names into ids, normalises every list and checks that no
// two reservations claim the same (protocol, port, address). The result
// satisfies the invariants documented on model.Resolved. p must come from
// policy.Parse: Resolve does not repeat its checks. It reports every
// problem it finds, as *policy.Errors.
func Resolve(p *policy.Policy, r Resolver) (*model.Resolved, error) {
	res, _, err := resolve(p, r, nil)
	return res, err
}

// reuser offers the i-th reservation of a policy as resolved before: ok
// when its spec is unchanged; else sameGeometry when the last version had
// it with the same protocols, ports and addresses (an owner edit), which
// cannot have made it overlap another. When not ok, res is still the last
// version when there was one (its cgroups' levels outlive a restart).
type reuser func(i int, spec policy.ReservationSpec) (res model.Reservation, ok, sameGeometry bool)

// resolve is Resolve taking, where reuse says so, a reservation resolved
// before instead of resolving its spec again. order[i] is where the
// policy's i-th reservation is in the result.
func resolve(p *policy.Policy, r Resolver, reuse reuser) (*model.Resolved, []int32, error) {
	var cgroups Cgroups
	cgroupsErr := errors.New("the user database cannot tell")
	if cs, ok := r.(cgroupSource); ok && p.NamesCgroups() {
		cgroups, cgroupsErr = cs.CgroupOwners()
		if f, ok := cgroups.(fresher); ok {
			cgroups = f.Fresh()
		}
	}
	if s, ok := r.(interface{ Snapshot() Resolver }); ok {
		r = s.Snapshot()
	}
	var errs policy.Errors
	users := lookups{kind: "user", fn: r.LookupUser, done: map[string]lookup{}}
	groups := lookups{kind: "group", fn: r.LookupGroup, done: map[string]lookup{}}
	res := make([]model.Reservation, len(p.Reservations))
	checkOverlaps := reuse == nil
	index := make([]int, len(p.Reservations)) // where each is in its file
	for i, rs := range p.Reservations {
		index[i] = rs.Index
		var last []model.Cgroup
		if reuse != nil {
			old, ok, sameGeometry := reuse(i, rs)
			if ok {
				res[i] = old
				continue
			}
			checkOverlaps = checkOverlaps || !sameGeometry
			last = old.Owners.Cgroups
		}
		// The field's path, for errors: only names and cgroups can have
		// one here (10k paths built for nothing were 5 allocations each).
		var field string
		if len(rs.Units)+len(rs.Cgroups) > 0 || namesSome(rs.Users) || namesSome(rs.Groups) {
			field = "reservations[" + strconv.Itoa(rs.Index) + "]"
		}
		protos := rs.Protocols
		if !sortedUnique(protos) {
			protos = slices.Clone(protos)
			slices.Sort(protos)
			protos = slices.Compact(protos)
		}
		res[i] = model.Reservation{
			Name:        rs.Name,
			Description: rs.Description,
			Protocols:   protos,
			Ports:       model.ExactPorts(rs.Ports),
			Addresses:   mergePrefixes(rs.Addresses),
			Owners: model.Owners{
				Root:    p.Settings.AllowRoot,
				UIDs:    model.ExactIDs(users.resolve(rs.Users, field, ".owner.users", &errs)),
				GIDs:    model.ExactIDs(groups.resolve(rs.Groups, field, ".owner.groups", &errs)),
				Cgroups: resolveCgroups(&rs, cgroups, cgroupsErr, field, last, &errs),
			},
			Pos: rs.Pos,
		}
	}
	if errs.Len() == 0 && checkOverlaps {
		// Owners are compared after resolution, so overlaps are only
		// meaningful once every name is known. (When every reservation is
		// one resolved before with the same ports and addresses, the last
		// check still holds.)
		overlaps(res, index, &errs)
	}
	if err := errs.Err(); err != nil {
		return nil, nil, err
	}
	perm := make([]int32, len(res))
	for i := range perm {
		perm[i] = int32(i)
	}
	slices.SortFunc(perm, func(a, b int32) int { return strings.Compare(res[a].Name, res[b].Name) })
	order := make([]int32, len(res))
	for k, i := range perm {
		order[i] = int32(k)
	}
	sorted := res
	model.Permute(sorted, perm) // in place: no second 10k copy per reload
	out := &model.Resolved{Settings: p.Settings, Reservations: sorted}
	out.Warnings = append(out.Warnings, socketUnitWarnings(p)...)
	for i := range sorted {
		if w := sorted[i].Owners.Waiting(); len(w) > 0 {
			out.Warnings = append(out.Warnings, fmt.Sprintf("%s: waiting for %s (no cgroup now): its ports are held for nobody until it starts; `portfw watch` follows units and cgroups as they come and go, a one-shot apply does not",
				sorted[i].Name, strings.Join(w, ", ")))
		}
	}
	return out, order, nil
}

type lookup struct {
	id  uint32
	err error
}

// lookups caches answers, since a policy often names the same user in
// many reservations and each System lookup may be a network round trip.
type lookups struct {
	kind string
	fn   func(string) (uint32, error)
	done map[string]lookup
}

// namesSome tells whether refs name a user or group (numbers never fail).
func namesSome(refs []policy.OwnerRef) bool {
	return slices.ContainsFunc(refs, func(r policy.OwnerRef) bool { return r.Name != "" })
}

// resolve looks refs up; an error is at field (the reservation's path)
// then sub ("owner.users") and the entry's index.
func (l *lookups) resolve(refs []policy.OwnerRef, field, sub string, errs *policy.Errors) []model.IDRange {
	out := make([]model.IDRange, 0, len(refs))
	for j, ref := range refs {
		if ref.Name == "" {
			out = append(out, ref.IDs)
			continue
		}
		got, ok := l.done[ref.Name]
		if !ok {
			got.id, got.err = l.fn(ref.Name)
			l.done[ref.Name] = got
		}
		if got.err == nil && got.id > model.MaxID {
			got.err = fmt.Errorf("%s %q has id %d, out of range 0..%d", l.kind, ref.Name, got.id, uint32(model.MaxID))
		}
		if got.err != nil {
			msg := got.err.Error()
			if errors.Is(got.err, ErrUnknown) {
				msg = fmt.Sprintf("unknown %s %q", l.kind, ref.Name)
			}
			errs.Add(ref.Pos, fmt.Sprintf("%s%s[%d]", field, sub, j), msg)
			continue
		}
		out = append(out, model.ID(got.id))
	}
	return out
}

func sortedUnique(ps []model.Protocol) bool {
	for i := 1; i < len(ps); i++ {
		if ps[i-1] >= ps[i] {
			return false
		}
	}
	return true
}

// mergePrefixes sorts prefixes (IPv4 first, then by address and length)
// and drops those inside another. Adjacent prefixes are kept apart: they
// are what the admin wrote and merging them buys the datapath nothing.
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return nil
	}
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	var out []netip.Prefix
	for _, p := range ps {
		// Sorted this way, a prefix's container, if any, is the last one kept.
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// overlap is what two reservations share.
type overlap struct {
	addrs []netip.Prefix // nil when either covers every address
	ports map[model.Protocol][]model.IDRange
}

// overlaps finds every pair of reservations that share a (protocol, port,
// address). It sweeps sorted port ranges per protocol rather than comparing
// all pairs, because policies with thousands of reservations are expected.
func overlaps(res []model.Reservation, index []int, errs *policy.Errors) {
	type span struct {
		lo, hi uint16
		res    int
	}
	pairs := map[[2]int]*overlap{}
	for _, pi := range model.Protocols() {
		proto := pi.Protocol
		var spans []span
		for i, r := range res {
			if !slices.Contains(r.Protocols, proto) {
				continue
			}
			for _, pr := range r.Ports {
				spans = append(spans, span{pr.Lo, pr.Hi, i})
			}
		}
		slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
		var active []span
		for _, s := range spans {
			active = slices.DeleteFunc(active, func(a span) bool { return a.hi < s.lo })
			for _, a := range active {
				if a.res == s.res {
					continue
				}
				key := [2]int{min(a.res, s.res), max(a.res, s.res)}
				o, seen := pairs[key]
				if !seen {
					o = addrOverlap(res[key[0]].Addresses, res[key[1]].Addresses)
					pairs[key] = o
				}
				if o != nil {
					o.ports[proto] = append(o.ports[proto], model.IDRange{Lo: uint32(s.lo), Hi: uint32(min(a.hi, s.hi))})
				}
			}
			active = append(active, s)
		}
	}
	keys := make([][2]int, 0, len(pairs))
	for k, o := range pairs {
		if o != nil {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b [2]int) int { return cmp.Or(cmp.Compare(a[1], b[1]), cmp.Compare(a[0], b[0])) })
	for _, k := range keys {
		first, later := res[k[0]], res[k[1]]
		o := pairs[k]
		var where []string
		for _, pi := range model.Protocols() {
			if rs := o.ports[pi.Protocol]; len(rs) > 0 {
				where = append(where, pi.Name+"/"+rangeList(model.MergeIDs(rs)))
			}
		}
		msg := fmt.Sprintf("reservation %q overlaps reservation %q (%s) on %s", later.Name, first.Name, first.Pos, strings.Join(where, " and "))
		if o.addrs != nil {
			msg += " at " + prefixList(o.addrs)
		}
		if first.Owners.Equal(later.Owners) {
			msg += "; merge them into one reservation"
		} else {
			msg += " with different owners"
		}
		errs.Add(later.Pos, fmt.Sprintf("reservations[%d].ports", index[k[1]]), msg)
	}
}

// addrOverlap returns nil when a and b share no address, else an overlap
// whose addrs are the shared prefixes (nil when either side is every
// address, since then the ports alone say where they clash).
func addrOverlap(a, b []netip.Prefix) *overlap {
	o := &overlap{ports: map[model.Protocol][]model.IDRange{}}
	if len(a) == 0 || len(b) == 0 {
		return o
	}
	for _, x := range a {
		for _, y := range b {
			if !x.Overlaps(y) {
				continue
			}
			// Of two overlapping prefixes one contains the other; the
			// shared part is the longer one.
			shared := x
			if y.Bits() > x.Bits() {
				shared = y
			}
			o.addrs = append(o.addrs, shared)
		}
	}
	if o.addrs == nil {
		return nil
	}
	o.addrs = mergePrefixes(o.addrs)
	return o
}

// listMax keeps overlap messages readable when ranges are many.
const listMax = 4

func rangeList(rs []model.IDRange) string {
	var parts []string
	for i, r := range rs {
		if i == listMax {
			parts = append(parts, fmt.Sprintf("... (%d more)", len(rs)-listMax))
			break
		}
		parts = append(parts, r.String())
	}
	return strings.Join(parts, ",")
}

func prefixList(ps []netip.Prefix) string {
	var parts []string
	for i, p := range ps {
		if i == listMax {
			parts = append(parts, fmt.Sprintf("... (%d more)", len(ps)-listMax))
			break
		}
		if p.IsSingleIP() {
			parts = append(parts, p.Addr().String())
		} else {
			parts = append(parts, p.String())
		}
	}
	return strings.Join(parts, ",")
}

// socketUnitWarnings: systemd makes the sockets of a socket unit in PID 1's
// cgroup (/init.scope), not in the socket unit's or the service's, so
// naming the socket unit (or only the service) does not make them the
// owner's; on a port only cgroups own, the service it activates would be
// served nothing (found by an attacker's review, TestUnitSocketActivation).
func socketUnitWarnings(p *policy.Policy) []string {
	var w []string
	for _, rs := range p.Reservations {
		for _, u := range rs.Units {
			if strings.HasSuffix(u.Name, ".socket") && !slices.ContainsFunc(rs.Cgroups, func(c policy.OwnerRef) bool { return c.Name == "/init.scope" }) {
				w = append(w, fmt.Sprintf("%s: systemd makes the sockets of %s in PID 1's cgroup (/init.scope), not in the socket unit's: add cgroups: [/init.scope] so the sockets it hands to its service are the owner's", rs.Name, u.Name))
			}
		}
	}
	return w
}
