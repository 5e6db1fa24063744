package bindguard

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/portfw/portfw/model"
)

// randomResolved makes a valid policy: each reservation its own ports, but
// for some that share port 7000 on distinct address prefixes.
func randomResolved(r *rand.Rand, n int) *model.Resolved {
	res := &model.Resolved{Settings: model.Settings{AllowRoot: r.IntN(2) == 0}}
	prefixes := []string{"192.0.2.0/25", "192.0.2.128/25", "2001:db8::/64", "2001:db8:1::/64", "198.51.100.7/32"}
	for i := range n {
		rv := model.Reservation{Name: fmt.Sprintf("r%d", i)}
		rv.Protocols = [][]model.Protocol{{model.TCP}, {model.UDP}, {model.TCP, model.UDP}, {model.UDPLite}}[r.IntN(4)]
		lo := uint16(10000 + 20*i)
		rv.Ports = []model.PortRange{{Lo: lo, Hi: lo + uint16(r.IntN(3))}}
		if i < len(prefixes) && r.IntN(2) == 0 {
			rv.Ports = []model.PortRange{model.Port(7000)}
			rv.Protocols = []model.Protocol{model.TCP}
			rv.Addresses = []netip.Prefix{netip.MustParsePrefix(prefixes[i])}
		}
		switch r.IntN(6) {
		case 4: // cgroups: some exist, some wait (a unit not running)
			for _, id := range r.Perm(4)[:1+r.IntN(3)] {
				c := model.Cgroup{Source: fmt.Sprintf("u%d.service", id), Unit: true}
				if id < 3 {
					c.Path, c.Level, c.ID = fmt.Sprintf("/system.slice/u%d.service", id), 2, uint64(7000+id)
				}
				rv.Owners.Cgroups = append(rv.Owners.Cgroups, c)
			}
			slices.SortFunc(rv.Owners.Cgroups, model.CompareCgroups)
		case 5: // a uid and a cgroup
			rv.Owners.UIDs = []model.IDRange{model.ID(uint32(1000 + r.IntN(3)))}
			rv.Owners.Cgroups = []model.Cgroup{{Source: "/app", Path: "/app", Level: 1, ID: uint64(7100 + r.IntN(2))}}
		case 0:
			rv.Owners.UIDs = []model.IDRange{model.ID(uint32(1000 + r.IntN(6)))}
		case 1:
			rv.Owners.UIDs = []model.IDRange{{Lo: 2000, Hi: uint32(2000 + r.IntN(40))}}
		case 2:
			rv.Owners.GIDs = []model.IDRange{model.ID(uint32(300 + r.IntN(3)))}
		case 3:
			rv.Owners.UIDs = []model.IDRange{model.ID(33), model.ID(uint32(1000 + r.IntN(3)))}
			rv.Owners.GIDs = []model.IDRange{{Lo: 500, Hi: 507}}
		}
		rv.Owners.Root = res.Settings.AllowRoot
		res.Reservations = append(res.Reservations, rv)
	}
	// The root-only entries of a lowered threshold: one per protocol,
	// sharing a name.
	for _, p := range []model.Protocol{model.TCP, model.UDP, model.UDPLite} {
		if r.IntN(3) == 0 {
			res.Guard = append(res.Guard, model.Reservation{Name: model.GuardName, Protocols: []model.Protocol{p},
				Ports: []model.PortRange{{Lo: 80, Hi: 80 + uint16(r.IntN(10))}}, Owners: model.Owners{Root: true}})
		}
	}
	return res
}

// edit changes a few reservations of r (a copy).
func edit(r *rand.Rand, old *model.Resolved) *model.Resolved {
	n := *old
	n.Reservations = slices.Clone(old.Reservations)
	fresh := randomResolved(r, len(n.Reservations)+2)
	fresh.Settings = n.Settings
	for range 1 + r.IntN(3) {
		i := r.IntN(len(n.Reservations))
		switch r.IntN(4) {
		case 0: // new owners, same ports
			n.Reservations[i].Owners = fresh.Reservations[i].Owners
			n.Reservations[i].Owners.Root = n.Settings.AllowRoot
		case 1: // replaced (maybe scoped now, or not)
			n.Reservations[i] = fresh.Reservations[i]
			n.Reservations[i].Owners.Root = n.Settings.AllowRoot
		case 2: // removed
			if len(n.Reservations) > 2 {
				n.Reservations = slices.Delete(n.Reservations, i, i+1)
			}
		case 3: // the root-only entries change
			n.Guard = fresh.Guard
		}
	}
	// A reservation may have come back on a shared scoped port: keep the
	// policy valid by dropping later duplicates of a prefix.
	seen := map[string]bool{}
	names := map[string]bool{}
	n.Reservations = slices.DeleteFunc(n.Reservations, func(rv model.Reservation) bool {
		key := fmt.Sprint(rv.Ports, rv.Addresses, rv.Protocols)
		dup := seen[key] || names[rv.Name]
		seen[key], names[rv.Name] = true, true
		return dup
	})
	return &n
}

// sim is the maps as a kernel holds them, entry text by map.
type sim map[string]map[string]string

func newSim(e entries) sim {
	s := sim{}
	s.apply(e, entries{})
	return s
}

func (s sim) apply(put, del entries) {
	for _, name := range mapNames[1:] {
		if s[name] == nil {
			s[name] = map[string]string{}
		}
		for _, x := range put.of(name) {
			s[name][string(x.k)] = string(x.v)
		}
		for _, x := range del.of(name) {
			if _, ok := s[name][string(x.k)]; !ok {
				panic(fmt.Sprintf("delete of a missing %s entry %x", name, x.k))
			}
			delete(s[name], string(x.k))
		}
	}
}

// canonical writes the maps with owner set numbers replaced by the sets'
// members, so two numberings of one policy compare equal.
func (s sim) canonical() []string {
	members := map[uint32][]string{}
	for _, name := range []string{mapOwners, mapRanges} {
		for k := range s[name] {
			num, m := ownerOfEntry([]byte(k), name == mapRanges)
			members[num] = append(members[num], fmt.Sprintf("%x", m))
		}
	}
	set := func(ref uint32) string {
		if ref == 0 {
			return "-"
		}
		ms := members[ref>>refShift]
		slices.Sort(ms)
		return fmt.Sprintf("{%s}/%d", strings.Join(ms, ","), ref&(1<<refShift-1))
	}
	var out []string
	for k, v := range s[mapPorts] {
		b := []byte(v)
		out = append(out, fmt.Sprintf("port %x: %s %s %s flags %d", k, set(binary.NativeEndian.Uint32(b)), set(binary.NativeEndian.Uint32(b[4:])),
			set(binary.NativeEndian.Uint32(b[8:])), binary.NativeEndian.Uint32(b[12:])))
	}
	for k, v := range s[mapScopes] {
		out = append(out, fmt.Sprintf("scope %x: %s", k, set(binary.NativeEndian.Uint32([]byte(v)))))
	}
	// Every set a port names has its entries, and no other set is left.
	referenced := map[uint32]bool{}
	for _, v := range s[mapPorts] {
		b := []byte(v)
		for i := range 3 {
			referenced[binary.NativeEndian.Uint32(b[4*i:])>>refShift] = true
		}
	}
	for _, v := range s[mapScopes] {
		referenced[binary.NativeEndian.Uint32([]byte(v))>>refShift] = true
	}
	for num := range members {
		if !referenced[num] {
			out = append(out, fmt.Sprintf("unreferenced set %d", num))
		}
	}
	slices.Sort(out)
	return out
}

// TestBuilderEqualsFromResolved: after any sequence of edits, the maps the
// Builder's updates leave hold what FromResolved of the policy would write,
// owner numbers aside; its counts are right; and a number is never given
// to a second set while the first still has entries.
func TestBuilderEqualsFromResolved(t *testing.T) {
	updates := 0
	for seed := range uint64(150) {
		r := rand.New(rand.NewPCG(seed, 9))
		pol := randomResolved(r, 6+r.IntN(8))
		spec := FromResolved(pol)
		maps := newSim(encode(spec))
		b := NewBuilder(pol, spec, func(id OwnerID) uint32 { return uint32(id) })
		for step := range 12 {
			next := edit(r, pol)
			put, del, ok := b.Update(next)
			if !ok {
				t.Fatalf("seed %d step %d: numbers ran out", seed, step)
			}
			// New sets' numbers are unused by the sets still in the maps.
			inUse := map[uint32]bool{}
			for _, name := range []string{mapOwners, mapRanges} {
				for k := range maps[name] {
					num, _ := ownerOfEntry([]byte(k), name == mapRanges)
					inUse[num] = true
				}
			}
			for _, name := range []string{mapOwners, mapRanges} {
				for _, x := range put.of(name) {
					if num, _ := ownerOfEntry(x.k, name == mapRanges); inUse[num] {
						t.Fatalf("seed %d step %d: number %d given to a new set while another still has it", seed, step, num)
					}
				}
			}
			maps.apply(put, del)
			want := newSim(encode(FromResolved(next)))
			if got, w := maps.canonical(), want.canonical(); !slices.Equal(got, w) {
				t.Fatalf("seed %d step %d: maps differ\n got %v\nwant %v", seed, step, got, w)
			}
			full := FromResolved(next)
			if ports, scopes := b.Counts(); ports != len(full.Ports) || scopes != len(full.Scopes) {
				t.Fatalf("seed %d step %d: counts %d ports %d scopes, want %d, %d", seed, step, ports, scopes, len(full.Ports), len(full.Scopes))
			}
			pol = next
			updates++
		}
	}
	t.Logf("%d updates checked", updates)
}
