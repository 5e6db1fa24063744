package bindguard

import (
	"slices"

	"github.com/portfw/portfw/model"
)

// Builder keeps what a namespace's guard maps hold, owner set numbers
// included, and turns the next resolved policy into the map entries that
// change: only the (protocol, port)s of reservations that changed are
// recomputed. A one-owner edit at 10k reservations is then a few entries
// and no pass over the policy; FromResolved and a comparison of the whole
// maps cost 40-60 ms.
//
// Its entries equal those of FromResolved for the same policy, but for the
// numbers of owner sets: a set keeps its number while any port names it,
// and new sets get numbers never used before, so that the update order of
// updateInPlace's comment holds (TestBuilderEqualsFromResolved).
type Builder struct {
	// res is the policy built, by name: copies, not pointers, which would
	// keep every version's whole array of reservations alive.
	res    map[string]model.Reservation
	byKey  map[portKey][]named
	ports  map[portKey]portOwners
	sets   interner
	next   uint32 // the highest number given out
	counts [2]int // guarded ports and scopes
}

// named is a holder and the reservation it comes from.
type named struct {
	name string
	holder
}

// maxNum bounds owner set numbers (ownerRef keeps refShift bits for flags).
const maxNum = 1<<(32-refShift) - 1

// NewBuilder builds the state of maps written from spec (for policy r) with
// owner set i numbered num(i+1).
func NewBuilder(r *model.Resolved, spec Spec, num func(OwnerID) uint32) *Builder {
	b := &Builder{res: map[string]model.Reservation{}, byKey: map[portKey][]named{}, ports: map[portKey]portOwners{}, sets: newInterner()}
	for i, o := range spec.Owners {
		s := b.sets.of(o)
		s.num = num(OwnerID(i + 1))
		b.next = max(b.next, s.num)
	}
	for _, res := range r.All() {
		b.add(res)
	}
	for k := range b.byKey {
		po := b.compute(k)
		b.ports[k] = po
		b.count(po, 1)
		po.each(func(o *ownerSet) { o.refs++ })
	}
	return b
}

// resKey names a reservation uniquely: the root-only entries of a lowered
// threshold share one name, one entry per protocol.
func resKey(res *model.Reservation) string {
	if res.Name != model.GuardName || len(res.Protocols) == 0 {
		return res.Name
	}
	return res.Name + "/" + res.Protocols[0].String()
}

func (b *Builder) add(res *model.Reservation) {
	key := resKey(res)
	b.res[key] = *res
	eachHolder(res, b.sets, func(k portKey, h holder) { b.byKey[k] = append(b.byKey[k], named{key, h}) })
}

func (b *Builder) drop(res *model.Reservation, touched map[portKey]bool) {
	key := resKey(res)
	delete(b.res, key)
	eachHolder(res, b.sets, func(k portKey, _ holder) {
		touched[k] = true
		b.byKey[k] = slices.DeleteFunc(b.byKey[k], func(n named) bool { return n.name == key })
		if len(b.byKey[k]) == 0 {
			delete(b.byKey, k)
		}
	})
}

func (b *Builder) compute(k portKey) portOwners {
	hs := make([]holder, len(b.byKey[k]))
	for i, n := range b.byKey[k] {
		hs[i] = n.holder
	}
	return computePort(hs, b.sets)
}

func (b *Builder) count(po portOwners, d int) {
	b.counts[0] += d
	b.counts[1] += d * len(po.scopes)
}

// Counts are the guarded ports and address-scoped entries.
func (b *Builder) Counts() (ports, scopes int) { return b.counts[0], b.counts[1] }

// Update moves the Builder to policy r and returns the map entries to put
// and delete. ok is false when the numbers would run out: the caller then
// writes a new generation from FromResolved and a NewBuilder. After a
// failed write of the entries, the Builder no longer matches the maps and
// must be dropped.
func (b *Builder) Update(r *model.Resolved) (put, del entries, ok bool) {
	touched := map[portKey]bool{}
	all := r.All()
	for _, res := range all {
		old, had := b.res[resKey(res)]
		if had {
			if sameGuard(&old, res) {
				continue
			}
			b.drop(&old, touched)
		}
		b.add(res)
		eachHolder(res, b.sets, func(k portKey, _ holder) { touched[k] = true })
	}
	if len(b.res) > len(all) {
		// Some reservations went: find them.
		seen := make(map[string]bool, len(all))
		for _, res := range all {
			seen[resKey(res)] = true
		}
		for name, old := range b.res {
			if !seen[name] {
				b.drop(&old, touched)
			}
		}
	}
	type change struct {
		k        portKey
		old, new portOwners
		had, has bool
	}
	changes := make([]change, 0, len(touched))
	for k := range touched {
		c := change{k: k}
		c.old, c.had = b.ports[k]
		if _, c.has = b.byKey[k]; c.has {
			c.new = b.compute(k)
		}
		changes = append(changes, c)
	}
	// New references first, then released ones: a set that moves from one
	// port to another is never dropped in between.
	for _, c := range changes {
		if c.has {
			c.new.each(func(o *ownerSet) { o.refs++ })
		}
	}
	var released []*ownerSet
	for _, c := range changes {
		if c.had {
			c.old.each(func(o *ownerSet) { o.refs--; released = append(released, o) })
		}
	}
	// Sets that came into use get new numbers and their entries; sets no
	// port names any more lose theirs.
	var fresh []*ownerSet
	for _, c := range changes {
		if c.has {
			c.new.each(func(o *ownerSet) {
				if o.num == 0 && !slices.Contains(fresh, o) {
					fresh = append(fresh, o)
				}
			})
		}
	}
	if int(b.next)+len(fresh) > maxNum {
		return entries{}, entries{}, false
	}
	for _, o := range fresh {
		b.next++
		o.num = b.next
		appendOwner(&put, o)
	}
	for _, o := range released {
		if o.refs == 0 && b.sets[o.key] == o {
			appendOwner(&del, o)
			delete(b.sets, o.key)
		}
	}

	num := func(o *ownerSet) uint32 { return o.num }
	for _, c := range changes {
		var oldPort, newPort kv
		var oldScopes, newScopes []kv
		if c.had {
			oldPort, oldScopes = portEntries(c.k, c.old, num)
			b.count(c.old, -1)
		}
		if c.has {
			newPort, newScopes = portEntries(c.k, c.new, num)
			b.ports[c.k] = c.new
			b.count(c.new, 1)
		} else {
			delete(b.ports, c.k)
		}
		switch {
		case c.has && (!c.had || string(oldPort.v) != string(newPort.v)):
			put.ports = append(put.ports, newPort)
		case !c.has && c.had:
			del.ports = append(del.ports, oldPort)
		}
		keep := map[string]bool{}
		for _, s := range newScopes {
			keep[string(s.k)] = true
		}
		was := map[string]string{}
		for _, s := range oldScopes {
			was[string(s.k)] = string(s.v)
			if !keep[string(s.k)] {
				del.scopes = append(del.scopes, s)
			}
		}
		for _, s := range newScopes {
			if v, ok := was[string(s.k)]; !ok || v != string(s.v) {
				put.scopes = append(put.scopes, s)
			}
		}
	}
	return put, del, true
}

// appendOwner adds an owner set's entries.
func appendOwner(e *entries, o *ownerSet) {
	for _, x := range ownerEntries(o.o, o.num) {
		if x.lpm {
			e.ranges = append(e.ranges, x.kv)
		} else {
			e.owners = append(e.owners, x.kv)
		}
	}
}

// portEntries are a port's entries in the ports and scopes maps.
func portEntries(k portKey, po portOwners, num func(*ownerSet) uint32) (kv, []kv) {
	ref := func(o *ownerSet) uint32 {
		if o == nil {
			return 0
		}
		return refOf(o.o, num(o))
	}
	p := portKV(k.proto, k.port, ref(po.def), ref(po.wild4), ref(po.wild6), len(po.scopes) > 0)
	var scopes []kv
	for _, s := range po.scopes {
		scopes = append(scopes, scopeKV(k.proto, k.port, s.prefix, ref(s.owners)))
	}
	return p, scopes
}

// sameGuard reports whether two reservations make the same guard entries.
func sameGuard(a, b *model.Reservation) bool {
	return model.SameGeometry(a, b) && a.Owners.Root == b.Owners.Root &&
		model.Equal(a.Owners.UIDs, b.Owners.UIDs) && model.Equal(a.Owners.GIDs, b.Owners.GIDs) &&
		model.Equal(a.Owners.Cgroups, b.Owners.Cgroups)
}
