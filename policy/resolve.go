package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
)

// Resolver turns user and group names into ids. It is the only way the
// policy pipeline reads the host, so tests can replace it with Static.
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

// System resolves names with os/user. portfw is built with cgo so that
// this goes through NSS and sees LDAP or SSSD users, not only /etc/passwd.
type System struct{}

var _ Resolver = System{}

func (System) LookupUser(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if errors.As(err, new(user.UnknownUserError)) {
			return 0, fmt.Errorf("user %q: %w", name, ErrUnknown)
		}
		return 0, fmt.Errorf("look up user %q: %w", name, err)
	}
	return parseID(u.Uid, "user", name)
}

func (System) LookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		if errors.As(err, new(user.UnknownGroupError)) {
			return 0, fmt.Errorf("group %q: %w", name, ErrUnknown)
		}
		return 0, fmt.Errorf("look up group %q: %w", name, err)
	}
	return parseID(g.Gid, "group", name)
}

func parseID(s, kind, name string) (uint32, error) {
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id > MaxID {
		return 0, fmt.Errorf("look up %s %q: unusable id %q", kind, name, s)
	}
	return uint32(id), nil
}

// Static resolves names from fixed maps; a name missing from a map is
// unknown. It is for tests.
type Static struct {
	Users, Groups map[string]uint32
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

// Load reads, parses and resolves the policy file at path. The Policy is
// returned whenever parsing succeeded, even if resolving failed, so that
// `portfw check` can still summarise it.
func Load(path string, r Resolver) (*Resolved, *Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(path, data)
	if err != nil {
		return nil, nil, err
	}
	res, err := Resolve(p, r)
	if err != nil {
		return nil, p, err
	}
	return res, p, nil
}

// Resolve turns names into ids, normalises every list and checks that no
// two reservations claim the same (protocol, port, address). The result
// satisfies the invariants documented on Resolved. p must come from Parse:
// Resolve does not repeat Parse's checks. It reports every problem it
// finds, as Errors.
func Resolve(p *Policy, r Resolver) (*Resolved, error) {
	var errs Errors
	users := lookups{kind: "user", fn: r.LookupUser, done: map[string]lookup{}}
	groups := lookups{kind: "group", fn: r.LookupGroup, done: map[string]lookup{}}
	res := make([]Reservation, len(p.Reservations))
	for i, rs := range p.Reservations {
		field := index("reservations", i)
		ports := make([]IDRange, len(rs.Ports))
		for j, pr := range rs.Ports {
			ports[j] = IDRange{uint32(pr.Lo), uint32(pr.Hi)}
		}
		protos := slices.Clone(rs.Protocols)
		slices.Sort(protos)
		res[i] = Reservation{
			Name:        rs.Name,
			Description: rs.Description,
			Protocols:   slices.Compact(protos),
			Ports:       toPorts(mergeRanges(ports)),
			UIDs:        mergeRanges(users.resolve(rs.Users, field+".owner.users", &errs)),
			GIDs:        mergeRanges(groups.resolve(rs.Groups, field+".owner.groups", &errs)),
			Addresses:   mergePrefixes(rs.Addresses),
			Pos:         rs.Pos,
		}
	}
	if len(errs) == 0 {
		// Owners are compared after resolution, so overlaps are only
		// meaningful once every name is known.
		errs = overlaps(res)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	slices.SortFunc(res, func(a, b Reservation) int { return strings.Compare(a.Name, b.Name) })
	return &Resolved{Settings: p.Settings, Reservations: res}, nil
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

func (l *lookups) resolve(refs []OwnerRef, field string, errs *Errors) []IDRange {
	out := make([]IDRange, 0, len(refs))
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
		if got.err == nil && got.id > MaxID {
			got.err = fmt.Errorf("%s %q has id %d, out of range 0..%d", l.kind, ref.Name, got.id, uint32(MaxID))
		}
		if got.err != nil {
			msg := got.err.Error()
			if errors.Is(got.err, ErrUnknown) {
				msg = fmt.Sprintf("unknown %s %q", l.kind, ref.Name)
			}
			*errs = append(*errs, &Error{Pos: ref.Pos, Field: index(field, j), Msg: msg})
			continue
		}
		out = append(out, IDRange{got.id, got.id})
	}
	return out
}

// mergeRanges sorts ranges and merges those that overlap. Ranges that
// only touch stay apart: single ports and ids the admin listed one by one
// must stay exact, since the compiler puts exact values in hash sets and
// only true ranges in the (costlier) interval sets.
func mergeRanges(rs []IDRange) []IDRange { return merge(rs, 0) }

// MergeIDs sorts ranges and merges those that overlap or touch: one
// representation for equal sets of ids, for comparing owners.
func MergeIDs(rs []IDRange) []IDRange { return merge(rs, 1) }

func merge(rs []IDRange, touch uint64) []IDRange {
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

func toPorts(rs []IDRange) []PortRange {
	out := make([]PortRange, len(rs))
	for i, r := range rs {
		out[i] = PortRange{uint16(r.Lo), uint16(r.Hi)}
	}
	return out
}

// mergePrefixes sorts prefixes (IPv4 first, then by address and length)
// and drops those inside another. Adjacent prefixes are kept apart: they
// are what the admin wrote and merging them buys the datapath nothing.
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
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
	ports map[Protocol][]IDRange
}

// overlaps finds every pair of reservations that share a (protocol, port,
// address). It sweeps sorted port ranges per protocol rather than comparing
// all pairs, because policies with thousands of reservations are expected.
func overlaps(res []Reservation) Errors {
	type span struct {
		lo, hi uint16
		res    int
	}
	pairs := map[[2]int]*overlap{}
	for _, proto := range []Protocol{TCP, UDP} {
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
					o.ports[proto] = append(o.ports[proto], IDRange{uint32(s.lo), uint32(min(a.hi, s.hi))})
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
	var errs Errors
	for _, k := range keys {
		first, later := res[k[0]], res[k[1]]
		o := pairs[k]
		var where []string
		for _, proto := range []Protocol{TCP, UDP} {
			if rs := o.ports[proto]; len(rs) > 0 {
				where = append(where, string(proto)+"/"+rangeList(MergeIDs(rs)))
			}
		}
		msg := fmt.Sprintf("reservation %q overlaps reservation %q (%s) on %s", later.Name, first.Name, first.Pos, strings.Join(where, " and "))
		if o.addrs != nil {
			msg += " at " + prefixList(o.addrs)
		}
		if slices.Equal(MergeIDs(first.UIDs), MergeIDs(later.UIDs)) && slices.Equal(MergeIDs(first.GIDs), MergeIDs(later.GIDs)) {
			msg += "; merge them into one reservation"
		} else {
			msg += " with different owners"
		}
		errs = append(errs, &Error{Pos: later.Pos, Field: index("reservations", k[1]) + ".ports", Msg: msg})
	}
	return errs
}

// addrOverlap returns nil when a and b share no address, else an overlap
// whose addrs are the shared prefixes (nil when either side is every
// address, since then the ports alone say where they clash).
func addrOverlap(a, b []netip.Prefix) *overlap {
	o := &overlap{ports: map[Protocol][]IDRange{}}
	if len(a) == 0 || len(b) == 0 {
		return o
	}
	for _, x := range a {
		for _, y := range b {
			if x.Overlaps(y) {
				// Of two overlapping prefixes one contains the other;
				// the shared part is the longer one.
				if x.Bits() < y.Bits() {
					x = y
				}
				o.addrs = append(o.addrs, x)
			}
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

func rangeList(rs []IDRange) string {
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
