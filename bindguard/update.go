package bindguard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
)

// An update changes a namespace's current inner maps in place when they
// can take the change: it reads what they hold, numbers the new policy's
// owner sets as the kernel already numbers equal ones, and writes only the
// entries that differ. A one-owner change at 10k reservations is then a
// handful of writes instead of four new maps of 30k entries, each swapped
// into a map of maps (every such swap waits for an RCU grace period:
// 10-15 ms each on this machine, most of a full update's 150 ms).
//
// Every entry is written whole, one at a time, in an order that keeps each
// (protocol, port) guarded by its old owners or its new ones at every
// instant, never by nobody and never by a mix that lets anyone else in:
// an owner set's entries go in before any port names it and go out after
// no port names it; a port's scope entries go in before the port is marked
// scoped and out after it is unmarked. Binds on different ports may see one
// port's new policy and another's old one for the microseconds of the
// update; none sees a port unguarded.

// current is what a namespace's inner maps hold.
type current struct {
	maps   map[string]*ebpf.Map // by outer map name
	ents   map[string]map[string][]byte
	byKey  map[string]uint32 // owner set membership -> its number in the maps
	maxNum uint32
}

func (c *current) close() {
	for _, m := range c.maps {
		m.Close()
	}
}

// readCurrent opens and reads the namespace's inner maps of generation gen;
// nil when one is missing.
func readCurrent(in *installed, cookie uint64, gen uint32) (*current, error) {
	c := &current{maps: map[string]*ebpf.Map{}, ents: map[string]map[string][]byte{}, byKey: map[string]uint32{}}
	for _, name := range mapNames[1:] {
		var inner *ebpf.Map
		if err := in.maps[name].Lookup(outerKey(cookie, gen), &inner); err != nil {
			c.close()
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil, nil
			}
			return nil, fmt.Errorf("read map %s: %w", name, err)
		}
		c.maps[name] = inner
		kvs, err := readAll(inner)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("read map %s: %w", name, err)
		}
		m := make(map[string][]byte, len(kvs))
		for _, e := range kvs {
			m[string(e.k)] = e.v
		}
		c.ents[name] = m
	}
	// Each owner set's membership: its entries with the number zeroed.
	members := map[uint32][]string{}
	for _, name := range []string{mapOwners, mapRanges} {
		for k := range c.ents[name] {
			num, m := ownerOfEntry([]byte(k), name == mapRanges)
			members[num] = append(members[num], m)
		}
	}
	for num, ms := range members {
		slices.Sort(ms)
		c.byKey[strings.Join(ms, "|")] = num
		c.maxNum = max(c.maxNum, num)
	}
	// A set with no members (nobody may bind) has no entries; the ports
	// and scopes that name it tell its number.
	refs := func(v []byte, n int) {
		for i := range n {
			num := binary.NativeEndian.Uint32(v[4*i:]) >> refShift
			if num == 0 {
				continue
			}
			c.maxNum = max(c.maxNum, num)
			if _, ok := members[num]; !ok {
				c.byKey[""] = num
			}
		}
	}
	for _, v := range c.ents[mapPorts] {
		refs(v, 3)
	}
	for _, v := range c.ents[mapScopes] {
		refs(v, 1)
	}
	return c, nil
}

// numbering gives each of spec's owner sets the number the kernel has for
// an equal set, and new sets numbers nobody uses.
func (c *current) numbering(spec Spec) func(OwnerID) uint32 {
	nums := make([]uint32, len(spec.Owners))
	next := c.maxNum
	taken := map[uint32]bool{}
	for i, o := range spec.Owners {
		if num, ok := c.byKey[membership(o)]; ok && !taken[num] {
			nums[i] = num
			taken[num] = true
		}
	}
	for i := range nums {
		if nums[i] == 0 {
			next++
			nums[i] = next
		}
	}
	return func(id OwnerID) uint32 { return nums[id-1] }
}

func membership(o Owners) string {
	var ms []string
	for _, x := range ownerEntries(o, 0) {
		_, m := ownerOfEntry(x.k, x.lpm)
		ms = append(ms, m)
	}
	slices.Sort(ms)
	return strings.Join(ms, "|")
}

// change is one inner map's part of an update.
type change struct {
	name     string
	put, del []kv
}

// updateInPlace changes the namespace's current inner maps to hold the
// spec that spec returns once they are read. It returns false, having
// written nothing, when they cannot take it: a map would outgrow its size,
// or the owner numbers would outgrow theirs.
func updateInPlace(in *installed, cookie uint64, gen uint32, specOf func() Spec) (written, bool, error) {
	c, err := readCurrent(in, cookie, gen)
	if err != nil || c == nil {
		return written{}, false, err
	}
	defer c.close()
	spec := specOf()
	num := c.numbering(spec)
	for i := range spec.Owners {
		if num(OwnerID(i+1)) > maxNum {
			return written{}, false, nil
		}
	}
	w := written{gen: gen, num: num}
	want := encodeAs(spec, num)
	changes := map[string]*change{}
	for _, name := range mapNames[1:] {
		ch := &change{name: name}
		have := c.ents[name]
		keep := map[string]bool{}
		for _, e := range want.of(name) {
			keep[string(e.k)] = true
			if v, ok := have[string(e.k)]; !ok || string(v) != string(e.v) {
				ch.put = append(ch.put, e)
			}
		}
		for k, v := range have {
			if !keep[k] {
				ch.del = append(ch.del, kv{[]byte(k), v})
			}
		}
		info, err := c.maps[name].Info()
		if err != nil {
			return written{}, false, fmt.Errorf("read map %s: %w", name, err)
		}
		if len(have)+len(ch.put) > int(info.MaxEntries) {
			return written{}, false, nil
		}
		changes[name] = ch
	}
	for i, name := range mapNames[1:] {
		w.ids[i], w.size[i] = mapID(c.maps[name]), len(want.of(name))
	}
	// Owner sets in, scopes in, ports switched, then everything stale out,
	// in the reverse order.
	for _, name := range []string{mapOwners, mapRanges, mapScopes, mapPorts} {
		if err := put(c.maps[name], name, changes[name].put); err != nil {
			return written{}, true, err
		}
	}
	for _, name := range []string{mapPorts, mapScopes, mapRanges, mapOwners} {
		if err := del(c.maps[name], name, changes[name].del); err != nil {
			return written{}, true, err
		}
	}
	return w, true, nil
}

// del deletes kvs' keys: in one batch where the map type has it.
func del(m *ebpf.Map, name string, kvs []kv) error {
	if len(kvs) == 0 {
		return nil
	}
	if keys, _, ok := batchOf(kvs); ok {
		if n, err := m.BatchDelete(keys, nil); err == nil && n == len(kvs) {
			return nil
		}
	}
	for _, e := range kvs {
		if err := m.Delete(e.k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from map %s: %w", name, err)
		}
	}
	return nil
}

// readAll returns every entry of m: in batches where the map type has
// them, else key by key.
func readAll(m *ebpf.Map) ([]kv, error) {
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	const batch = 4096
	kt, vt := reflect.ArrayOf(ks, reflect.TypeFor[byte]()), reflect.ArrayOf(vs, reflect.TypeFor[byte]())
	var out []kv
	var cursor ebpf.MapBatchCursor
	for {
		// A new pair of arrays per batch: the entries returned are
		// slices of them (two allocations per batch, not per entry).
		keys, vals := reflect.MakeSlice(reflect.SliceOf(kt), batch, batch), reflect.MakeSlice(reflect.SliceOf(vt), batch, batch)
		kb := unsafe.Slice((*byte)(keys.UnsafePointer()), batch*ks)
		vb := unsafe.Slice((*byte)(vals.UnsafePointer()), batch*vs)
		n, err := m.BatchLookup(&cursor, keys.Interface(), vals.Interface(), nil)
		for i := range n {
			out = append(out, kv{kb[i*ks : (i+1)*ks : (i+1)*ks], vb[i*vs : (i+1)*vs : (i+1)*vs]})
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			if len(out) == 0 && n == 0 {
				return readEach(m)
			}
			return nil, err
		}
	}
}

func readEach(m *ebpf.Map) ([]kv, error) {
	keys, err := allKeys(m)
	if err != nil {
		return nil, err
	}
	out := make([]kv, 0, len(keys))
	for _, k := range keys {
		v, err := m.LookupBytes(k)
		if err != nil {
			return nil, err
		}
		if v != nil {
			out = append(out, kv{k, v})
		}
	}
	return out, nil
}
