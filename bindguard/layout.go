package bindguard

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/portfw/portfw/model"
)

// The maps, as the program reads them (layout 3). Five maps serve every
// network namespace on the host:
//
//	nets    hash  cookie u64 -> {gen u32, flags u32, netns inode u64}
//	ports   hash of maps  {cookie u64, gen u32, 0 u32} -> inner hash
//	          {proto u8, 0 u8, port be16} -> {default, wild4, wild6 ownerRef, flags u32}
//	scopes  hash of maps  -> inner lpm trie
//	          {prefixlen u32, proto u8, 0 u8, port be16, addr [16]byte} -> ownerRef
//	owners  hash of maps  -> inner hash {kind u8, 0 [3]u8, owner u32, id u64} -> u32 (unused)
//	          kind 1: id is a uid, 2: a gid, 3: a cgroup id
//	ranges  hash of maps  -> inner lpm trie {prefixlen u32, kind u8, 0 [3]u8, owner be32, id be32} -> u32
//
// A namespace's policy is four inner maps, one generation. An update builds
// the next generation's maps beside the current ones, switches nets[cookie]
// to it with one write, and only then deletes generations older than the
// previous one: a bind sees the old policy or the new one, never a mix, and
// a bind that read the previous generation an instant before the switch
// still finds its maps. A missing inner map makes the program refuse (fail
// closed), never allow.
//
// An ownerRef is OwnerID<<3 | 1 if the set has a uid range | 2 if it has a
// gid range | 4 if it has cgroups, so the program looks ranges up only for
// sets that have them, and calls bpf_get_current_ancestor_cgroup_id (once
// per level, up to model.MaxCgroupLevel) only for sets that own cgroups.
// Exact ids and cgroup ids go into the owners hash; ranges are split into
// prefixes for the ranges trie, whose lookup cost is bounded by the key's 64
// bits, not by the number of entries. IPv4 addresses are stored IPv4-mapped
// (::ffff:a.b.c.d), which is also how an IPv6 socket binds an IPv4 address.
//
// Layout 3 added the cgroup kind and flag, and moved OwnerID up one bit:
// layout 2's programs read a layout 3 reference as another set.
const (
	// layoutVersion changes whenever the maps or their meaning change
	// incompatibly. It is part of the program's name, so a portfw of another
	// layout never mistakes this one's programs for its own.
	layoutVersion = 3

	netsKeySize    = 8
	netsValueSize  = 16
	outerKeySize   = 16
	portsKeySize   = 4
	portsValueSize = 16
	scopesKeySize  = 4 + 20
	ownersKeySize  = 16
	rangesKeySize  = 4 + 12

	kindUID    = 1
	kindGID    = 2
	kindCgroup = 3

	refUIDRanges = 1
	refGIDRanges = 2
	refCgroups   = 4
	// refShift is where the owner set's number starts in an ownerRef.
	refShift = 3

	// The prefix lengths of full keys: everything before the address or id
	// must match exactly.
	scopesKeyBits = 32 + 128
	rangesKeyBits = 64 + 32

	// maxPortKeys is every (protocol, port) the bind hook can see.
	maxPortKeys = 3 * 65536
)

// entries are the inner map entries of one namespace's Spec, as raw bytes
// in the host's byte order where the program reads numbers.
type entries struct {
	ports, scopes, owners, ranges []kv
}

type kv struct{ k, v []byte }

// ownerRef is the program's reference to owner set id, which the maps
// number as num(id) (the Spec's own numbering, or one that keeps the
// numbers the kernel already has: see updateInPlace).
func ownerRef(s Spec, id OwnerID, num func(OwnerID) uint32) uint32 {
	if id == 0 {
		return 0
	}
	return refOf(s.Owners[id-1], num(id))
}

// refOf is the reference to owner set o numbered num.
func refOf(o Owners, num uint32) uint32 {
	ref := num << refShift
	if hasRange(o.UIDs) {
		ref |= refUIDRanges
	}
	if hasRange(o.GIDs) {
		ref |= refGIDRanges
	}
	if len(o.Cgroups) > 0 {
		ref |= refCgroups
	}
	return ref
}

// portKV is a ports map entry: the references of the port's default and
// wildcard owners.
func portKV(proto model.Protocol, port uint16, def, wild4, wild6 uint32, scoped bool) kv {
	var kb, vb []byte
	return portKVIn(&kb, &vb, proto, port, def, wild4, wild6, scoped)
}

// portKVIn is portKV with the key and value appended to *kb and *vb, and
// slices of them (capped) returned: a whole generation's ports in two
// allocations instead of two each.
func portKVIn(kb, vb *[]byte, proto model.Protocol, port uint16, def, wild4, wild6 uint32, scoped bool) kv {
	k0, v0 := len(*kb), len(*vb)
	*kb = append(*kb, byte(proto), 0, byte(port>>8), byte(port))
	flags := uint32(0)
	if scoped {
		flags = 1
	}
	for _, x := range [...]uint32{def, wild4, wild6, flags} {
		*vb = binary.NativeEndian.AppendUint32(*vb, x)
	}
	k, v := *kb, *vb
	return kv{k[k0:len(k):len(k)], v[v0:len(v):len(v)]}
}

// scopeKV is a scopes trie entry: an address prefix of a port and the
// reference of its owners.
func scopeKV(proto model.Protocol, port uint16, prefix netip.Prefix, ref uint32) kv {
	addr := prefix.Addr().As16() // IPv4 comes out IPv4-mapped
	bits := prefix.Bits()
	if prefix.Addr().Is4() {
		bits += 96
	}
	k := u32(uint32(32 + bits))
	k = append(k, byte(proto), 0, byte(port>>8), byte(port))
	k = append(k, addr[:]...)
	return kv{k, u32(ref)}
}

func hasRange(rs []model.IDRange) bool {
	for _, r := range rs {
		if r.Lo != r.Hi {
			return true
		}
	}
	return false
}

func u32(x uint32) []byte { return binary.NativeEndian.AppendUint32(nil, x) }

// encode lays a Spec out as inner map entries, its owner sets numbered as
// in the Spec.
func encode(s Spec) entries {
	return encodeAs(s, func(id OwnerID) uint32 { return uint32(id) })
}

// encodeAs is encode with owner set id numbered num(id) in the maps.
func encodeAs(s Spec, num func(OwnerID) uint32) entries {
	e := entries{ports: make([]kv, 0, len(s.Ports)), scopes: make([]kv, 0, len(s.Scopes))}
	kb, vb := make([]byte, 0, len(s.Ports)*portsKeySize), make([]byte, 0, len(s.Ports)*portsValueSize)
	for _, p := range s.Ports {
		e.ports = append(e.ports, portKVIn(&kb, &vb, p.Proto, p.Port, ownerRef(s, p.Default, num), ownerRef(s, p.Wild4, num), ownerRef(s, p.Wild6, num), p.Scoped))
	}
	for _, sc := range s.Scopes {
		e.scopes = append(e.scopes, scopeKV(sc.Proto, sc.Port, sc.Prefix, ownerRef(s, sc.Owner, num)))
	}
	for i, o := range s.Owners {
		for _, x := range ownerEntries(o, num(OwnerID(i+1))) {
			if x.lpm {
				e.ranges = append(e.ranges, x.kv)
			} else {
				e.owners = append(e.owners, x.kv)
			}
		}
	}
	return e
}

type ownerEntry struct {
	kv
	lpm bool // in the ranges trie, else in the owners hash
}

// ownerEntries are the map entries of owner set o, numbered id.
func ownerEntries(o Owners, id uint32) []ownerEntry {
	var out []ownerEntry
	for _, set := range []struct {
		kind byte
		ids  []model.IDRange
	}{{kindUID, o.UIDs}, {kindGID, o.GIDs}} {
		for _, r := range set.ids {
			if r.Lo == r.Hi {
				k := []byte{set.kind, 0, 0, 0}
				k = binary.NativeEndian.AppendUint32(k, id)
				k = binary.NativeEndian.AppendUint64(k, uint64(r.Lo))
				out = append(out, ownerEntry{kv{k, u32(1)}, false})
				continue
			}
			for _, p := range idPrefixes(r.Lo, r.Hi) {
				k := u32(uint32(64 + p.bits))
				k = append(k, set.kind, 0, 0, 0)
				k = binary.BigEndian.AppendUint32(k, id)
				k = binary.BigEndian.AppendUint32(k, p.id)
				out = append(out, ownerEntry{kv{k, u32(1)}, true})
			}
		}
	}
	for _, cg := range o.Cgroups {
		k := []byte{kindCgroup, 0, 0, 0}
		k = binary.NativeEndian.AppendUint32(k, id)
		k = binary.NativeEndian.AppendUint64(k, cg)
		out = append(out, ownerEntry{kv{k, u32(1)}, false})
	}
	return out
}

// ownerOfEntry is the owner set number an owners or ranges entry belongs
// to, and the entry with that number zeroed: the set's membership, which
// equal sets share whatever their numbers.
func ownerOfEntry(k []byte, lpm bool) (uint32, string) {
	m := []byte(string(k))
	if lpm {
		id := binary.BigEndian.Uint32(m[8:])
		clear(m[8:12])
		return id, "r" + string(m)
	}
	id := binary.NativeEndian.Uint32(m[4:])
	clear(m[4:8])
	return id, "o" + string(m)
}

type idPrefix struct {
	id   uint32
	bits int // leading bits that must match, 0..32
}

// idPrefixes splits [lo, hi] into the fewest aligned prefixes (at most 62).
func idPrefixes(lo, hi uint32) []idPrefix {
	var out []idPrefix
	for l := uint64(lo); l <= uint64(hi); {
		// The largest aligned block starting at l that stays within hi.
		size := 32
		if l != 0 {
			size = bits.TrailingZeros64(l)
		}
		for size > 0 && l+(1<<size)-1 > uint64(hi) {
			size--
		}
		out = append(out, idPrefix{uint32(l), 32 - size})
		l += 1 << size
	}
	return out
}

// outerKey is the key of a namespace's inner maps of one generation.
func outerKey(cookie uint64, gen uint32) []byte {
	k := binary.NativeEndian.AppendUint64(nil, cookie)
	k = binary.NativeEndian.AppendUint32(k, gen)
	return binary.NativeEndian.AppendUint32(k, 0)
}

func parseOuterKey(k []byte) (cookie uint64, gen uint32) {
	return binary.NativeEndian.Uint64(k), binary.NativeEndian.Uint32(k[8:])
}

// netEntry is a namespace's entry in the nets map.
type netEntry struct {
	gen   uint32
	flags uint32
	inode uint64 // the namespace's nsfs inode when it was applied, for the sweep
}

func (n netEntry) bytes() []byte {
	v := binary.NativeEndian.AppendUint32(nil, n.gen)
	v = binary.NativeEndian.AppendUint32(v, n.flags)
	return binary.NativeEndian.AppendUint64(v, n.inode)
}

func parseNetEntry(v []byte) netEntry {
	return netEntry{binary.NativeEndian.Uint32(v), binary.NativeEndian.Uint32(v[4:]), binary.NativeEndian.Uint64(v[8:])}
}
