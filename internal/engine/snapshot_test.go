package engine

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/portfw/portfw/model"
)

// fill sets every field of v, however deep, to something not zero, from
// rng: a field the codec does not carry then fails the round trip.
func fill(t *testing.T, v reflect.Value, rng *rand.Rand) {
	switch v.Type() {
	case reflect.TypeFor[netip.Prefix]():
		if rng.IntN(2) == 0 {
			v.Set(reflect.ValueOf(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), 0, 0}), 16)))
		} else {
			v.Set(reflect.ValueOf(netip.MustParsePrefix(fmt.Sprintf("fd%02x::/%d", rng.IntN(256), 8+rng.IntN(120)))))
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", rng.IntN(1000)))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		top := ^uint64(0) >> (64 - v.Type().Bits()) // the type's largest
		v.SetUint(top - rng.Uint64N(top))           // 1 to top
	case reflect.Int:
		v.SetInt(1 + rng.Int64N(1<<31-1))
	case reflect.Slice:
		n := 1 + rng.IntN(3)
		v.Set(reflect.MakeSlice(v.Type(), n, n))
		for i := range n {
			fill(t, v.Index(i), rng)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if !v.Type().Field(i).IsExported() {
				t.Fatalf("%s.%s is not exported: the codec cannot be checked by reflection", v.Type(), v.Type().Field(i).Name)
			}
			fill(t, v.Field(i), rng)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), rng)
	default:
		t.Fatalf("fill: a field of kind %s (%s): teach the snapshot codec and this test about it", v.Kind(), v.Type())
	}
}

// TestSnapshotCodec: a resolved policy with every field set comes back
// equal, as do the empty one and the extremes; anything cut short or
// with bytes left over is refused, never half-read.
func TestSnapshotCodec(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cases := []*model.Resolved{{}}
	for range 50 {
		var r model.Resolved
		fill(t, reflect.ValueOf(&r).Elem(), rng)
		cases = append(cases, &r)
	}
	maxed := &model.Resolved{Settings: model.Settings{MarkOwned: ^uint32(0), Log: model.LogRate{Count: ^uint32(0)}},
		Reservations: []model.Reservation{{Name: "a", Ports: []model.PortRange{{Lo: 0, Hi: 65535}},
			Owners: model.Owners{UIDs: []model.IDRange{{Lo: 0, Hi: ^uint32(0)}}, Cgroups: []model.Cgroup{{ID: ^uint64(0), Level: 255}}}}}}
	cases = append(cases, maxed)
	for i, r := range cases {
		b := binary.AppendUvarint(appendSnapshotBody(nil, "t", "d", r), 4242)
		table, digest, got, gen, err := decodeSnapshot(b)
		if err != nil || table != "t" || digest != "d" || gen != 4242 {
			t.Fatalf("case %d: %q %q gen %d, %v", i, table, digest, gen, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("case %d came back different:\n got %+v\nwant %+v", i, got, r)
		}
		// Appending to a decoded list never writes into another's.
		for j := range got.Reservations {
			res := &got.Reservations[j]
			res.Ports = append(res.Ports, model.Port(1))
			res.Owners.UIDs = append(res.Owners.UIDs, model.ID(1))
		}
		if i > 0 {
			_, _, again, _, _ := decodeSnapshot(b)
			for j := range again.Reservations {
				if a, g := again.Reservations[j], got.Reservations[j]; !reflect.DeepEqual(a.Ports, g.Ports[:len(g.Ports)-1]) ||
					!reflect.DeepEqual(a.Protocols, g.Protocols) || !reflect.DeepEqual(a.Owners.GIDs, g.Owners.GIDs) {
					t.Fatalf("case %d: an append to one reservation's list changed another's", i)
				}
			}
		}
		for cut := range len(b) {
			if _, _, _, _, err := decodeSnapshot(b[:cut]); err == nil {
				t.Fatalf("case %d cut to %d of %d bytes was accepted", i, cut, len(b))
			}
		}
		if _, _, _, _, err := decodeSnapshot(append(b, 0)); err == nil {
			t.Fatalf("case %d with a byte more was accepted", i)
		}
	}
}

// FuzzSnapshot: no input makes the decoder panic or allocate without
// bound; what it accepts encodes to bytes that decode to the same.
func FuzzSnapshot(f *testing.F) {
	f.Add(binary.AppendUvarint(appendSnapshotBody(nil, "t", "d", &model.Resolved{Reservations: []model.Reservation{{Name: "x",
		Protocols: []model.Protocol{model.TCP}, Ports: []model.PortRange{model.Port(80)}, Addresses: []netip.Prefix{netip.MustParsePrefix("::1/128")}}}}), 7))
	f.Fuzz(func(t *testing.T, b []byte) {
		table, digest, r, gen, err := decodeSnapshot(b)
		if err != nil {
			return
		}
		again := binary.AppendUvarint(appendSnapshotBody(nil, table, digest, r), uint64(gen))
		table2, digest2, r2, gen2, err := decodeSnapshot(again)
		if err != nil || table2 != table || digest2 != digest || gen2 != gen || !reflect.DeepEqual(r2, r) {
			t.Fatalf("accepted %q, but its encoding decodes to %+v (%v)", b, r2, err)
		}
	})
}
