package bindguard

import (
	"encoding/binary"
	"math/bits"

	"github.com/portfw/portfw/policy"
)

// The maps, as the program reads them. Every key starts with a generation
// byte: Apply writes a new policy under the other generation, flips the
// generation in the config map with one write, then deletes the old
// entries, so a bind sees either the old policy or the new one, never a mix
// and never none.
//
//	config  array[1]  u32 0 -> {gen u32, layout u32}
//	ports   hash      {gen u8, proto u8, port be16} -> {default, wild4, wild6 ownerRef, flags u32}
//	scopes  lpm trie  {prefixlen u32, gen u8, proto u8, port be16, addr [16]byte} -> ownerRef
//	owners  hash      {gen u8, kind u8, 0 u16, owner u32, id u32} -> u32 (unused)
//	ranges  lpm trie  {prefixlen u32, gen u8, kind u8, 0 u16, owner be32, id be32} -> u32 (unused)
//
// An ownerRef is OwnerID<<2 | 1 if the set has a uid range | 2 if it has a
// gid range, so the program looks ranges up only for sets that have them.
// Exact ids go into the owners hash; ranges are split into prefixes for the
// ranges trie, whose lookup cost is bounded by the key's 96 bits, not by the
// number of entries. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d),
// which is also how an IPv6 socket binds an IPv4 address.
const (
	// layoutVersion changes whenever the maps or the program change
	// incompatibly; Apply then replaces everything instead of updating
	// maps in place.
	layoutVersion = 1

	portsKeySize   = 4
	portsValueSize = 16
	scopesKeySize  = 4 + 20
	ownersKeySize  = 12
	rangesKeySize  = 4 + 12

	kindUID = 1
	kindGID = 2

	refUIDRanges = 1
	refGIDRanges = 2

	// The prefix lengths of full keys: everything before the address or
	// id must match exactly.
	scopesKeyBits = 32 + 128
	rangesKeyBits = 64 + 32

	// maxPortKeys is every (generation, protocol, port) there is.
	maxPortKeys = 2 * 2 * 65536
)

// entries are the map entries of one generation of a Spec, as raw bytes in
// the host's byte order where the program reads numbers.
type entries struct {
	ports, scopes, owners, ranges []kv
}

type kv struct{ k, v []byte }

func protoNumber(p policy.Protocol) byte { return p.Number() }

func ownerRef(s Spec, id OwnerID) uint32 {
	if id == 0 {
		return 0
	}
	o := s.Owners[id-1]
	ref := uint32(id) << 2
	if hasRange(o.UIDs) {
		ref |= refUIDRanges
	}
	if hasRange(o.GIDs) {
		ref |= refGIDRanges
	}
	return ref
}

func hasRange(rs []policy.IDRange) bool {
	for _, r := range rs {
		if r.Lo != r.Hi {
			return true
		}
	}
	return false
}

func u32(x uint32) []byte { return binary.NativeEndian.AppendUint32(nil, x) }

// encode lays a Spec out as map entries of generation gen.
func encode(s Spec, gen byte) entries {
	var e entries
	for _, p := range s.Ports {
		k := []byte{gen, protoNumber(p.Proto), byte(p.Port >> 8), byte(p.Port)}
		v := make([]byte, 0, portsValueSize)
		flags := uint32(0)
		if p.Scoped {
			flags = 1
		}
		for _, x := range []uint32{ownerRef(s, p.Default), ownerRef(s, p.Wild4), ownerRef(s, p.Wild6), flags} {
			v = binary.NativeEndian.AppendUint32(v, x)
		}
		e.ports = append(e.ports, kv{k, v})
	}
	for _, sc := range s.Scopes {
		addr := sc.Prefix.Addr().As16() // IPv4 comes out IPv4-mapped
		bits := sc.Prefix.Bits()
		if sc.Prefix.Addr().Is4() {
			bits += 96
		}
		k := u32(uint32(32 + bits))
		k = append(k, gen, protoNumber(sc.Proto), byte(sc.Port>>8), byte(sc.Port))
		k = append(k, addr[:]...)
		e.scopes = append(e.scopes, kv{k, u32(ownerRef(s, sc.Owner))})
	}
	for i, o := range s.Owners {
		id := uint32(i + 1)
		for _, set := range []struct {
			kind byte
			ids  []policy.IDRange
		}{{kindUID, o.UIDs}, {kindGID, o.GIDs}} {
			for _, r := range set.ids {
				if r.Lo == r.Hi {
					k := []byte{gen, set.kind, 0, 0}
					k = binary.NativeEndian.AppendUint32(k, id)
					k = binary.NativeEndian.AppendUint32(k, r.Lo)
					e.owners = append(e.owners, kv{k, u32(1)})
					continue
				}
				for _, p := range idPrefixes(r.Lo, r.Hi) {
					k := u32(uint32(64 + p.bits))
					k = append(k, gen, set.kind, 0, 0)
					k = binary.BigEndian.AppendUint32(k, id)
					k = binary.BigEndian.AppendUint32(k, p.id)
					e.ranges = append(e.ranges, kv{k, u32(1)})
				}
			}
		}
	}
	return e
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

// genOf is the generation byte of a raw key of any of the maps.
func genOf(m string, k []byte) byte {
	if m == mapScopes || m == mapRanges {
		return k[4]
	}
	return k[0]
}
