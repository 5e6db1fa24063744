package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/model"
)

// The encoding below mirrors what nft 1.0.x emits for the same text, down
// to register numbers and byteorder expressions, so that `nft list` prints
// a table applied here exactly as one loaded from the text form.

var fieldType = map[compiler.Field]nftables.SetDatatype{
	compiler.FieldIPv4:   nftables.TypeIPAddr,
	compiler.FieldIPv6:   nftables.TypeIP6Addr,
	compiler.FieldProto:  nftables.TypeInetProto,
	compiler.FieldPort:   nftables.TypeInetService,
	compiler.FieldUID:    nftables.TypeUID,
	compiler.FieldGID:    nftables.TypeGID,
	compiler.FieldCgroup: nftables.TypeCGroupV2,
}

// words is the number of 32-bit registers a field takes in a concatenation.
func words(f compiler.Field) uint32 {
	switch f {
	case compiler.FieldIPv6:
		return 4
	case compiler.FieldCgroup:
		return 2
	}
	return 1
}

// hostEndian reports whether the kernel loads the field in host byte
// order. Interval sets compare keys as big-endian bytes, so such fields
// are converted (hton) before an interval lookup and stored big-endian in
// interval set elements.
func hostEndian(f compiler.Field) bool {
	return f == compiler.FieldProto || f == compiler.FieldUID || f == compiler.FieldGID || f == compiler.FieldCgroup
}

func setKeyType(s *compiler.Set) (nftables.SetDatatype, error) {
	types := make([]nftables.SetDatatype, len(s.Fields))
	for i, f := range s.Fields {
		types[i] = fieldType[f]
	}
	return nftables.ConcatSetType(types...)
}

func newSet(t *nftables.Table, s *compiler.Set) (*nftables.Set, []nftables.SetElement, error) {
	set, err := setHeader(t, s)
	if err != nil {
		return nil, nil, err
	}
	return set, setElements(s), nil
}

// setHeader is the set s declares, without its elements.
func setHeader(t *nftables.Table, s *compiler.Set) (*nftables.Set, error) {
	kt, err := setKeyType(s)
	if err != nil {
		return nil, fmt.Errorf("set %s: %w", s.Name, err)
	}
	return &nftables.Set{
		Table:         t,
		Name:          s.Name,
		KeyType:       kt,
		Interval:      s.Interval,
		Concatenation: len(s.Fields) > 1,
		Counter:       s.Counter,
		Dynamic:       s.Dynamic,
		Size:          s.Size(),
	}, nil
}

// setElements are s's elements as the library takes them.
func setElements(s *compiler.Set) []nftables.SetElement {
	elems := make([]nftables.SetElement, len(s.Elements))
	// Every key (and end) of the set in one buffer: 60k elements were
	// half a million small allocations.
	buf := make([]byte, 0, len(s.Elements)*keyLen(s))
	for i, e := range s.Elements {
		elems[i], buf = encodeElement(s, e, buf)
	}
	return elems
}

// keyLen is the bytes encodeElement appends per element of s.
func keyLen(s *compiler.Set) int {
	n := 0
	for _, f := range s.Fields {
		switch f {
		case compiler.FieldIPv6:
			n += 16
		case compiler.FieldCgroup:
			n += 8
		default:
			n += 4
		}
	}
	if s.Interval {
		n *= 2
	}
	return n
}

// encodeElement encodes e, appending its key (and end) to buf, and returns
// the element and buf.
func encodeElement(s *compiler.Set, e compiler.Element, buf []byte) (nftables.SetElement, []byte) {
	start := len(buf)
	for _, f := range s.Fields {
		buf = appendField(buf, f, e, s.Interval, false)
	}
	el := nftables.SetElement{Key: buf[start:len(buf):len(buf)], Comment: e.Comment}
	if s.Interval {
		mid := len(buf)
		for _, f := range s.Fields {
			buf = appendField(buf, f, e, s.Interval, true)
		}
		el.KeyEnd = buf[mid:len(buf):len(buf)]
	}
	return el, buf
}

// appendField appends one field of an element, padded to a register: the
// low end of its range, or with hi the high end.
func appendField(b []byte, f compiler.Field, e compiler.Element, interval, hi bool) []byte {
	switch f {
	case compiler.FieldIPv4, compiler.FieldIPv6:
		a := e.Addr.Masked().Addr()
		if hi {
			a = lastAddr(e.Addr)
		}
		if a.Is4() {
			v := a.As4()
			return append(b, v[:]...)
		}
		v := a.As16()
		return append(b, v[:]...)
	case compiler.FieldProto:
		return append(b, byte(e.Proto), 0, 0, 0)
	case compiler.FieldPort:
		port := e.Ports.Lo
		if hi {
			port = e.Ports.Hi
		}
		return append(binary.BigEndian.AppendUint16(b, port), 0, 0)
	case compiler.FieldCgroup:
		if interval {
			return binary.BigEndian.AppendUint64(b, e.Cgroup)
		}
		return binary.NativeEndian.AppendUint64(b, e.Cgroup)
	default: // uid, gid
		id := e.ID.Lo
		if hi {
			id = e.ID.Hi
		}
		if interval {
			return binary.BigEndian.AppendUint32(b, id)
		}
		return binary.NativeEndian.AppendUint32(b, id)
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// keyLoad is how a key is loaded: the expressions that put it in reg, and
// the dependency it needs (ip saddr only exists in IPv4 packets).
func keyLoad(k compiler.Key, reg uint32) []expr.Any {
	switch k.Kind {
	case compiler.KeyL4Proto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}}
	case compiler.KeySkUID:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeySKUID, Register: reg}}
	case compiler.KeySkGID:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeySKGID, Register: reg}}
	case compiler.KeyCgroup:
		return []expr.Any{&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: uint32(k.Level), Register: reg}}
	case compiler.KeySport, compiler.KeyDport:
		off := uint32(0)
		if k.Kind == compiler.KeyDport {
			off = 2
		}
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2}}
	case compiler.KeyIPSaddr, compiler.KeyIPDaddr:
		off := uint32(12)
		if k.Kind == compiler.KeyIPDaddr {
			off = 16
		}
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
	default: // ip6 saddr/daddr
		off := uint32(8)
		if k.Kind == compiler.KeyIP6Daddr {
			off = 24
		}
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 16}}
	}
}

func nfprotoDep(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// register returns the register of the key starting at word offset off of
// a concatenation: nft puts the first in reg 1 (the 128-bit register that
// aliases the first 32-bit ones) and the rest in 32-bit registers 8+off.
func register(off uint32) uint32 {
	if off == 0 {
		return 1
	}
	return 8 + off
}

func encodeRule(e []compiler.Expr, sets map[string]*nftables.Set) ([]expr.Any, error) {
	var out []expr.Any
	for _, x := range e {
		switch x := x.(type) {
		case compiler.Lookup:
			s, ok := sets[x.Set.Name]
			if !ok {
				return nil, fmt.Errorf("rule uses undeclared set %s", x.Set.Name)
			}
			out = appendKeys(out, x.Keys, x.Set, true)
			out = append(out, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID})
		case compiler.Update:
			s, ok := sets[x.Set.Name]
			if !ok || !x.Set.Dynamic {
				return nil, fmt.Errorf("rule updates undeclared or static set %s", x.Set.Name)
			}
			// As nft: the key is loaded again, without the dependency (a
			// count set's update follows the lookup that implies it), and
			// the set's counter is not repeated: the kernel gives each new
			// element the set's expressions.
			out = appendKeys(out, x.Keys, x.Set, false)
			out = append(out, &expr.Dynset{SrcRegKey: 1, SetName: s.Name, SetID: s.ID, Operation: unix.NFT_DYNSET_OP_UPDATE})
		case compiler.CtMarkHas:
			out = append(out,
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(x.Bit), Xor: native32(0)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(x.Bit)})
		case compiler.SkUIDIs:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(x.UID)})
		case compiler.SocketFull:
			out = append(out,
				&expr.Socket{Key: expr.SocketKeyWildcard, Register: 1},
				&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: []byte{1}})
		case compiler.Attributed:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0xffffffff)})
		case compiler.Match:
			m, err := encodeMatch(x)
			if err != nil {
				return nil, err
			}
			out = append(out, m...)
		case compiler.CtMarkSet:
			// x | set with clear bits cleared: (x & ^(clear|set)) ^ set.
			out = append(out,
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^(x.Clear | x.Set)), Xor: native32(x.Set)},
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true})
		case compiler.LimitLog:
			unit, ok := rateUnits[x.Rate.Unit]
			if !ok || !x.Rate.Enabled() {
				return nil, fmt.Errorf("bad log rate %v", x.Rate)
			}
			out = append(out,
				&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(x.Rate.Count), Unit: unit, Burst: 5},
				&expr.Log{Key: 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_FLAGS, Flags: expr.LogFlagsUID, Data: []byte(x.Prefix)})
		case compiler.Verdict:
			switch x.Kind {
			case compiler.Accept:
				out = append(out, &expr.Verdict{Kind: expr.VerdictAccept})
			case compiler.Drop:
				out = append(out, &expr.Verdict{Kind: expr.VerdictDrop})
			case compiler.Goto:
				out = append(out, &expr.Verdict{Kind: expr.VerdictGoto, Chain: x.Chain})
			case compiler.Jump:
				out = append(out, &expr.Verdict{Kind: expr.VerdictJump, Chain: x.Chain})
			case compiler.Return:
				out = append(out, &expr.Verdict{Kind: expr.VerdictReturn})
			default:
				return nil, fmt.Errorf("unknown verdict %d", x.Kind)
			}
		default:
			return nil, fmt.Errorf("cannot encode %T", x)
		}
	}
	return out, nil
}

// appendKeys appends the loads of a set key's concatenation to out: with
// deps, the nfproto dependency of address keys first.
func appendKeys(out []expr.Any, keys []compiler.Key, set *compiler.Set, deps bool) []expr.Any {
	for _, k := range keys {
		switch {
		case !deps:
		case k.Kind == compiler.KeyIPSaddr, k.Kind == compiler.KeyIPDaddr:
			out = append(out, nfprotoDep(unix.NFPROTO_IPV4)...)
		case k.Kind == compiler.KeyIP6Saddr, k.Kind == compiler.KeyIP6Daddr:
			out = append(out, nfprotoDep(unix.NFPROTO_IPV6)...)
		}
	}
	off := uint32(0)
	for _, k := range keys {
		reg := register(off)
		out = append(out, keyLoad(k, reg)...)
		f := k.Field()
		if set.Interval && hostEndian(f) {
			// nft converts host-endian fields before an interval lookup.
			size, n := uint32(4), uint32(4)
			switch f {
			case compiler.FieldCgroup:
				size, n = 8, 8
			case compiler.FieldProto:
				size, n = 2, 1
			}
			out = append(out, &expr.Byteorder{SourceRegister: reg, DestRegister: reg, Op: expr.ByteorderHton, Len: n, Size: size})
		}
		off += words(f)
	}
	return out
}

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

var rateUnits = map[model.RateUnit]expr.LimitTime{
	model.PerSecond: expr.LimitTimeSecond, model.PerMinute: expr.LimitTimeMinute,
	model.PerHour: expr.LimitTimeHour, model.PerDay: expr.LimitTimeDay,
}

// matchSpec is where a compiler.Match field lives in the packet, and the
// dependency nft writes before loading it (ip hdrlength only exists in
// IPv4 packets).
type matchSpec struct {
	nfproto byte // NFPROTO_IPV4 or _IPV6; 0: none
	l4proto byte // IPPROTO_TCP; 0: none
	meta    bool // meta l4proto rather than a payload load
	base    expr.PayloadBase
	off     uint32
	len     uint32 // bytes; a 2-byte field compares big-endian
	bits    byte   // for a bit field: its mask within the byte
	shift   uint   // and the shift of its value
}

var matchSpecs = map[compiler.MatchField]matchSpec{
	compiler.MatchL4Proto:    {meta: true, len: 1},
	compiler.MatchTCPFlags:   {l4proto: unix.IPPROTO_TCP, base: expr.PayloadBaseTransportHeader, off: 13, len: 1},
	compiler.MatchTCPDoff:    {l4proto: unix.IPPROTO_TCP, base: expr.PayloadBaseTransportHeader, off: 12, len: 1, bits: 0xf0, shift: 4},
	compiler.MatchIPHdrLen:   {nfproto: unix.NFPROTO_IPV4, base: expr.PayloadBaseNetworkHeader, off: 0, len: 1, bits: 0x0f},
	compiler.MatchIPLength:   {nfproto: unix.NFPROTO_IPV4, base: expr.PayloadBaseNetworkHeader, off: 2, len: 2},
	compiler.MatchIP6Nexthdr: {nfproto: unix.NFPROTO_IPV6, base: expr.PayloadBaseNetworkHeader, off: 6, len: 1},
	compiler.MatchIP6Length:  {nfproto: unix.NFPROTO_IPV6, base: expr.PayloadBaseNetworkHeader, off: 4, len: 2},
}

func (m matchSpec) value(v uint32) []byte {
	if m.len == 2 {
		return binary.BigEndian.AppendUint16(nil, uint16(v))
	}
	return []byte{byte(v << m.shift)}
}

// encodeMatch writes a Match as nft 1.0.x does: dependency, load, mask,
// compare.
func encodeMatch(x compiler.Match) ([]expr.Any, error) {
	m, ok := matchSpecs[x.Field]
	if !ok {
		return nil, fmt.Errorf("cannot encode match on field %d", x.Field)
	}
	var out []expr.Any
	if m.nfproto != 0 {
		out = append(out, nfprotoDep(m.nfproto)...)
	}
	if m.l4proto != 0 {
		out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{m.l4proto}})
	}
	if m.meta {
		out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
	} else {
		out = append(out, &expr.Payload{DestRegister: 1, Base: m.base, Offset: m.off, Len: m.len})
	}
	mask := m.bits
	if x.Mask != 0 {
		mask = byte(x.Mask)
	}
	if mask != 0 {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{mask}, Xor: []byte{0}})
	}
	op := expr.CmpOpEq
	if x.Not {
		op = expr.CmpOpNeq
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: m.value(x.Value)}), nil
}
