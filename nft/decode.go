package nft

import (
	"bytes"
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

// Read returns portfw's table as the kernel holds it, in the compiler's
// vocabulary, so that comparing its text form with a compiled ruleset's
// tells whether the kernel is in step with a policy. Anything portfw would
// not have written reads back as compiler.Unknown.
func (c *Conn) Read(name string) (*compiler.Ruleset, error) {
	t, err := c.nc.ListTableOfFamily(name, nftables.TableFamilyINet)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("read table %s: %w", name, ErrNoTable)
		}
		return nil, fmt.Errorf("read table %s: %w", name, err)
	}
	rs := &compiler.Ruleset{Table: name}
	ksets, err := c.nc.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("read sets of %s: %w", name, err)
	}
	sets := map[string]*compiler.Set{}
	for _, ks := range ksets {
		s, err := setOf(ks)
		if err != nil {
			return nil, err
		}
		sets[s.Name] = s
		rs.Sets = append(rs.Sets, s)
	}
	if err := c.dumpSets(name, rs.Sets); err != nil {
		return nil, err
	}
	chains, err := c.nc.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("read chains of %s: %w", name, err)
	}
	for _, kc := range chains {
		if kc.Table.Name != name {
			continue
		}
		ch := &compiler.Chain{Name: kc.Name}
		if kc.Hooknum != nil {
			ch.Hook = hookName(kc)
		}
		rules, err := c.nc.GetRules(t, kc)
		if err != nil {
			return nil, fmt.Errorf("read rules of %s/%s: %w", name, kc.Name, err)
		}
		for _, r := range rules {
			ch.Rules = append(ch.Rules, decodeRule(r.Exprs, sets))
		}
		rs.Chains = append(rs.Chains, ch)
	}
	return rs, nil
}

// ReadSets reads the sets of the table that want names (see Kernel).
func (c *Conn) ReadSets(name string, want func(string) bool) (*compiler.Ruleset, error) {
	t, err := c.nc.ListTableOfFamily(name, nftables.TableFamilyINet)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("read table %s: %w", name, ErrNoTable)
		}
		return nil, fmt.Errorf("read table %s: %w", name, err)
	}
	ksets, err := c.nc.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("read sets of %s: %w", name, err)
	}
	rs := &compiler.Ruleset{Table: name}
	for _, ks := range ksets {
		if !want(ks.Name) {
			continue
		}
		s, err := setOf(ks)
		if err != nil {
			return nil, err
		}
		rs.Sets = append(rs.Sets, s)
	}
	if err := c.dumpSets(name, rs.Sets); err != nil {
		return nil, err
	}
	return rs, nil
}

func hookName(c *nftables.Chain) string {
	prio := 0
	if c.Priority != nil {
		prio = int(*c.Priority)
	}
	policy := "accept"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	name := fmt.Sprintf("hook-%d", *c.Hooknum)
	switch *c.Hooknum {
	case *nftables.ChainHookInput:
		name = "input"
	case *nftables.ChainHookOutput:
		name = "output"
	}
	if c.Type != nftables.ChainTypeFilter || prio != 0 || policy != "accept" {
		// Not a chain portfw makes: keep the difference visible.
		name += fmt.Sprintf(" (type %s priority %d policy %s)", c.Type, prio, policy)
	}
	return name
}

var fieldByType = map[string]compiler.Field{
	"ipv4_addr": compiler.FieldIPv4, "ipv6_addr": compiler.FieldIPv6,
	"inet_proto": compiler.FieldProto, "inet_service": compiler.FieldPort,
	"uid": compiler.FieldUID, "gid": compiler.FieldGID,
	"cgroupsv2": compiler.FieldCgroup,
}

// setOf is the declaration of a set read from the kernel; dumpSets reads
// its elements, which stay in the kernel's order (comparisons go by key,
// and the text form sorts what it prints).
func setOf(ks *nftables.Set) (*compiler.Set, error) {
	s := &compiler.Set{Name: ks.Name, Interval: ks.Interval, Counter: ks.Counter, Dynamic: ks.Dynamic}
	if ks.Dynamic {
		s.MadeSize = ks.Size
		if s.MadeSize == 0 {
			s.MadeSize = 1<<32 - 1 // no size: unbounded, not a count set's
		}
	}
	for _, t := range nftables.ConcatSetTypeElements(ks.KeyType) {
		f, ok := fieldByType[t.Name]
		if !ok {
			return nil, fmt.Errorf("read set %s: key type %q is not one portfw writes", ks.Name, ks.KeyType.Name)
		}
		s.Fields = append(s.Fields, f)
	}
	return s, nil
}

// decodeKey decodes an element's key (and, for an interval, its end) by the
// set's fields.
func decodeKey(s *compiler.Set, key, end []byte) (compiler.Element, error) {
	var e compiler.Element
	if end == nil {
		end = key
	}
	k0, e0 := key, end
	bad := func() error { return fmt.Errorf("element %x-%x does not fit the set's key", k0, e0) }
	for _, f := range s.Fields {
		n := 4 * int(words(f))
		if len(key) < n || len(end) < n {
			return e, bad()
		}
		lo, hi := key[:n], end[:n]
		key, end = key[n:], end[n:]
		switch f {
		case compiler.FieldIPv4, compiler.FieldIPv6:
			p, ok := rangeToPrefix(lo, hi)
			if !ok {
				return e, fmt.Errorf("element address range %x-%x is not a prefix", lo, hi)
			}
			e.Addr = p
		case compiler.FieldProto:
			if lo[0] != hi[0] {
				return e, bad()
			}
			e.Proto = model.Protocol(lo[0])
		case compiler.FieldPort:
			e.Ports = model.PortRange{Lo: binary.BigEndian.Uint16(lo), Hi: binary.BigEndian.Uint16(hi)}
		case compiler.FieldCgroup:
			var order binary.ByteOrder = binary.NativeEndian
			if s.Interval {
				order = binary.BigEndian
			}
			if order.Uint64(lo) != order.Uint64(hi) {
				return e, bad()
			}
			e.Cgroup = order.Uint64(lo)
		default:
			var order binary.ByteOrder = binary.NativeEndian
			if s.Interval {
				order = binary.BigEndian
			}
			e.ID = model.IDRange{Lo: order.Uint32(lo), Hi: order.Uint32(hi)}
		}
	}
	if len(key) != 0 {
		return e, bad()
	}
	return e, nil
}

func rangeToPrefix(lo, hi []byte) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(lo)
	if !ok {
		return netip.Prefix{}, false
	}
	for bits := a.BitLen(); bits >= 0; bits-- {
		p := netip.PrefixFrom(a, bits)
		if p.Masked().Addr() != a {
			break
		}
		if bytes.Equal(lastAddr(p).AsSlice(), hi) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// decodeRule is the inverse of encodeRule on the expression patterns it
// writes. Whatever else is found becomes one compiler.Unknown.
func decodeRule(xs []expr.Any, sets map[string]*compiler.Set) compiler.Rule {
	var r compiler.Rule
	for len(xs) > 0 {
		e, n := decodeOne(xs, sets)
		if n == 0 {
			return append(r, compiler.Unknown{Desc: fmt.Sprintf("%d expressions starting with %T", len(xs), xs[0])})
		}
		if e != nil {
			r = append(r, e)
		}
		xs = xs[n:]
	}
	return r
}

func decodeOne(xs []expr.Any, sets map[string]*compiler.Set) (compiler.Expr, int) {
	at := func(i int) expr.Any {
		if i < len(xs) {
			return xs[i]
		}
		return nil
	}
	switch x := xs[0].(type) {
	case *expr.Verdict:
		switch x.Kind {
		case expr.VerdictAccept:
			return compiler.Verdict{Kind: compiler.Accept}, 1
		case expr.VerdictDrop:
			return compiler.Verdict{Kind: compiler.Drop}, 1
		case expr.VerdictGoto:
			return compiler.Verdict{Kind: compiler.Goto, Chain: x.Chain}, 1
		case expr.VerdictJump:
			return compiler.Verdict{Kind: compiler.Jump, Chain: x.Chain}, 1
		case expr.VerdictReturn:
			return compiler.Verdict{Kind: compiler.Return}, 1
		}
	case *expr.Limit:
		log, ok := at(1).(*expr.Log)
		unit, known := limitUnits[x.Unit]
		if ok && known && x.Type == expr.LimitTypePkts && !x.Over && x.Burst == 5 && x.Rate > 0 && x.Rate <= 1<<32-1 && log.Flags == expr.LogFlagsUID {
			return compiler.LimitLog{Rate: model.LogRate{Count: uint32(x.Rate), Unit: unit}, Prefix: string(bytes.TrimRight(log.Data, "\x00"))}, 2
		}
	case *expr.Ct:
		bw, ok1 := at(1).(*expr.Bitwise)
		if x.Key != expr.CtKeyMARK || x.SourceRegister || !ok1 || len(bw.Mask) != 4 || len(bw.Xor) != 4 {
			break
		}
		mask, xor := binaryutil.NativeEndian.Uint32(bw.Mask), binaryutil.NativeEndian.Uint32(bw.Xor)
		if cmp, ok := at(2).(*expr.Cmp); ok && xor == 0 && cmp.Op == expr.CmpOpEq && bytes.Equal(cmp.Data, bw.Mask) {
			return compiler.CtMarkHas{Bit: mask}, 3
		}
		if set, ok := at(2).(*expr.Ct); ok && set.SourceRegister && set.Key == expr.CtKeyMARK && mask&xor == 0 {
			return compiler.CtMarkSet{Set: xor, Clear: ^(mask | xor)}, 3
		}
	case *expr.Meta:
		if m, n := decodeMatch(xs); n > 0 {
			return m, n
		}
		if x.Key == expr.MetaKeyNFPROTO {
			// The dependency of an ip/ip6 address key: implied by the lookup.
			if cmp, ok := at(1).(*expr.Cmp); ok && cmp.Op == expr.CmpOpEq {
				if e, n := decodeLookup(xs[2:], sets); n > 0 {
					return e, n + 2
				}
			}
			break
		}
		if cmp, ok := at(1).(*expr.Cmp); ok && x.Key == expr.MetaKeySKUID && len(cmp.Data) == 4 {
			v := binaryutil.NativeEndian.Uint32(cmp.Data)
			if cmp.Op == expr.CmpOpEq {
				return compiler.SkUIDIs{UID: v}, 2
			}
			if cmp.Op == expr.CmpOpNeq && v == 0xffffffff {
				return compiler.Attributed{}, 2
			}
		}
		return decodeLookup(xs, sets)
	case *expr.Payload:
		if m, n := decodeMatch(xs); n > 0 {
			return m, n
		}
		return decodeLookup(xs, sets)
	case *expr.Socket:
		if cmp, ok := at(1).(*expr.Cmp); ok && x.Key == expr.SocketKeyWildcard && cmp.Op == expr.CmpOpLte && bytes.Equal(cmp.Data, []byte{1}) {
			return compiler.SocketFull{}, 2
		}
	}
	return nil, 0
}

var limitUnits = map[expr.LimitTime]model.RateUnit{
	expr.LimitTimeSecond: model.PerSecond, expr.LimitTimeMinute: model.PerMinute,
	expr.LimitTimeHour: model.PerHour, expr.LimitTimeDay: model.PerDay,
}

// decodeMatch is the inverse of encodeMatch: it tries every field's
// pattern at the start of xs and returns the match and how many
// expressions it spans.
func decodeMatch(xs []expr.Any) (compiler.Expr, int) {
	for field, m := range matchSpecs {
		if x, n, ok := m.decode(field, xs); ok {
			return x, n
		}
	}
	return nil, 0
}

func (m matchSpec) decode(field compiler.MatchField, xs []expr.Any) (compiler.Match, int, bool) {
	i := 0
	next := func() expr.Any {
		if i < len(xs) {
			i++
			return xs[i-1]
		}
		return nil
	}
	dep := func(key expr.MetaKey, v byte) bool {
		meta, ok1 := next().(*expr.Meta)
		cmp, ok2 := next().(*expr.Cmp)
		return ok1 && ok2 && meta.Key == key && cmp.Op == expr.CmpOpEq && bytes.Equal(cmp.Data, []byte{v})
	}
	if m.nfproto != 0 && !dep(expr.MetaKeyNFPROTO, m.nfproto) {
		return compiler.Match{}, 0, false
	}
	if m.l4proto != 0 && !dep(expr.MetaKeyL4PROTO, m.l4proto) {
		return compiler.Match{}, 0, false
	}
	if m.meta {
		if meta, ok := next().(*expr.Meta); !ok || meta.Key != expr.MetaKeyL4PROTO {
			return compiler.Match{}, 0, false
		}
	} else if p, ok := next().(*expr.Payload); !ok || p.Base != m.base || p.Offset != m.off || p.Len != m.len || p.DestRegister != 1 {
		return compiler.Match{}, 0, false
	}
	x := compiler.Match{Field: field}
	e := next()
	if bw, ok := e.(*expr.Bitwise); ok {
		if bw.Len != 1 || len(bw.Mask) != 1 || !bytes.Equal(bw.Xor, []byte{0}) {
			return compiler.Match{}, 0, false
		}
		switch {
		case m.bits != 0 && bw.Mask[0] == m.bits:
		case m.bits == 0 && field == compiler.MatchTCPFlags:
			x.Mask = uint32(bw.Mask[0])
		default:
			return compiler.Match{}, 0, false
		}
		e = next()
	} else if m.bits != 0 {
		return compiler.Match{}, 0, false
	}
	cmp, ok := e.(*expr.Cmp)
	if !ok || cmp.Register != 1 || len(cmp.Data) != int(m.len) || (cmp.Op != expr.CmpOpEq && cmp.Op != expr.CmpOpNeq) {
		return compiler.Match{}, 0, false
	}
	x.Not = cmp.Op == expr.CmpOpNeq
	if m.len == 2 {
		x.Value = uint32(binary.BigEndian.Uint16(cmp.Data))
	} else {
		if m.bits != 0 && cmp.Data[0]&^m.bits != 0 {
			return compiler.Match{}, 0, false
		}
		x.Value = uint32(cmp.Data[0] >> m.shift)
	}
	if m.meta && i < len(xs) {
		// meta l4proto tcp followed by a TCP header load is that load's
		// dependency, not a match of its own.
		if p, ok := xs[i].(*expr.Payload); ok && p.Base == expr.PayloadBaseTransportHeader {
			return compiler.Match{}, 0, false
		}
	}
	return x, i, true
}

// decodeLookup reads a run of key loads (and nft's byteorder conversions)
// ending in a set lookup, or in the update of a count set.
func decodeLookup(xs []expr.Any, sets map[string]*compiler.Set) (compiler.Expr, int) {
	var keys []compiler.Key
	for i, x := range xs {
		switch x := x.(type) {
		case *expr.Meta:
			k, ok := map[expr.MetaKey]compiler.KeyKind{expr.MetaKeyL4PROTO: compiler.KeyL4Proto, expr.MetaKeySKUID: compiler.KeySkUID, expr.MetaKeySKGID: compiler.KeySkGID}[x.Key]
			if !ok {
				return nil, 0
			}
			keys = append(keys, compiler.Key{Kind: k})
		case *expr.Payload:
			k, ok := payloadKey(x)
			if !ok {
				return nil, 0
			}
			keys = append(keys, compiler.Key{Kind: k})
		case *expr.Socket:
			if x.Key != expr.SocketKeyCgroupv2 || x.Level > 255 {
				return nil, 0
			}
			keys = append(keys, compiler.Key{Kind: compiler.KeyCgroup, Level: uint8(x.Level)})
		case *expr.Byteorder:
		case *expr.Lookup:
			s := sets[x.SetName]
			if s == nil || x.Invert || len(keys) == 0 {
				return nil, 0
			}
			return compiler.Lookup{Keys: keys, Set: s}, i + 1
		case *expr.Dynset:
			s := sets[x.SetName]
			if s == nil || !s.Dynamic || x.Invert || len(keys) == 0 || x.Operation != unix.NFT_DYNSET_OP_UPDATE ||
				x.SrcRegKey != 1 || x.SrcRegData != 0 || x.Timeout != 0 || !setExprs(x.Exprs, s) {
				return nil, 0
			}
			return compiler.Update{Keys: keys, Set: s}, i + 1
		default:
			return nil, 0
		}
	}
	return nil, 0
}

// setExprs reports whether an update's expressions are the ones the
// kernel gives it from its set: none, or the set's counter.
func setExprs(xs []expr.Any, s *compiler.Set) bool {
	switch len(xs) {
	case 0:
		return true
	case 1:
		_, ok := xs[0].(*expr.Counter)
		return ok && s.Counter
	}
	return false
}

func payloadKey(p *expr.Payload) (compiler.KeyKind, bool) {
	type pk struct {
		base     expr.PayloadBase
		off, len uint32
	}
	k, ok := map[pk]compiler.KeyKind{
		{expr.PayloadBaseTransportHeader, 0, 2}: compiler.KeySport,
		{expr.PayloadBaseTransportHeader, 2, 2}: compiler.KeyDport,
		{expr.PayloadBaseNetworkHeader, 12, 4}:  compiler.KeyIPSaddr,
		{expr.PayloadBaseNetworkHeader, 16, 4}:  compiler.KeyIPDaddr,
		{expr.PayloadBaseNetworkHeader, 8, 16}:  compiler.KeyIP6Saddr,
		{expr.PayloadBaseNetworkHeader, 24, 16}: compiler.KeyIP6Daddr,
	}[pk{p.Base, p.Offset, p.Len}]
	return k, ok
}
