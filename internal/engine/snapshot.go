package engine

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/portfw/portfw/model"
)

// The snapshot's encoding: a header, the body (table, digest, resolved
// policy), known before the commit and encoded beside it, then the commit's
// generation. Everything is a uvarint, or a uvarint length and its bytes.
// A snapshot is only a cache of what the state's digest already pins:
// loadSnapshot checks that the decoded policy hashes to it, and reads the
// table instead of one it cannot decode, so a change of this encoding
// costs one read of the table after an upgrade.
//
// It replaced encoding/gob, whose reflection took 30 ms to decode 10k
// reservations (status, a one-shot apply of a change) and about 20 ms to
// encode them (every commit); TestSnapshotCodec fills every field of the
// model by reflection, so a field added to it and not here fails.
const snapshotMagic = "portfw-snapshot-1\n"

var errSnapshot = errors.New("snapshot: damaged or of another version")

func appendSnapshotBody(b []byte, table, digest string, r *model.Resolved) []byte {
	b = append(b, snapshotMagic...)
	b = appendString(b, table)
	b = appendString(b, digest)
	s := r.Settings
	b = appendString(b, s.Table)
	b = appendBool(b, s.AllowRoot)
	b = binary.AppendUvarint(b, uint64(s.PortStart.Mode))
	b = binary.AppendUvarint(b, uint64(s.PortStart.Value))
	b = binary.AppendUvarint(b, uint64(s.Log.Count))
	b = binary.AppendUvarint(b, uint64(s.Log.Unit))
	b = binary.AppendUvarint(b, uint64(s.MarkOwned))
	b = binary.AppendUvarint(b, uint64(s.MarkSquatted))
	b = binary.AppendUvarint(b, uint64(s.BindGuard))
	for _, list := range [][]model.Reservation{r.Reservations, r.Guard} {
		b = binary.AppendUvarint(b, uint64(len(list)))
		for i := range list {
			b = appendReservation(b, &list[i])
		}
	}
	b = binary.AppendUvarint(b, uint64(len(r.Warnings)))
	for _, w := range r.Warnings {
		b = appendString(b, w)
	}
	return b
}

func appendReservation(b []byte, r *model.Reservation) []byte {
	b = appendString(b, r.Name)
	b = appendString(b, r.Description)
	b = binary.AppendUvarint(b, uint64(len(r.Protocols)))
	for _, p := range r.Protocols {
		b = binary.AppendUvarint(b, uint64(p))
	}
	b = binary.AppendUvarint(b, uint64(len(r.Ports)))
	for _, p := range r.Ports {
		b = binary.AppendUvarint(b, uint64(p.Lo))
		b = binary.AppendUvarint(b, uint64(p.Hi))
	}
	b = binary.AppendUvarint(b, uint64(len(r.Addresses)))
	for _, a := range r.Addresses {
		b, _ = a.AppendBinary(append(b, byte(a.Addr().BitLen()/8)))
	}
	b = appendBool(b, r.Owners.Root)
	b = appendIDs(b, r.Owners.UIDs)
	b = appendIDs(b, r.Owners.GIDs)
	b = binary.AppendUvarint(b, uint64(len(r.Owners.Cgroups)))
	for _, c := range r.Owners.Cgroups {
		b = appendString(b, c.Source)
		b = appendBool(b, c.Unit)
		b = appendString(b, c.Path)
		b = binary.AppendUvarint(b, uint64(c.Level))
		b = binary.AppendUvarint(b, c.ID)
	}
	b = appendString(b, r.Pos.File)
	b = binary.AppendUvarint(b, uint64(r.Pos.Line))
	return binary.AppendUvarint(b, uint64(r.Pos.Col))
}

func appendIDs(b []byte, ids []model.IDRange) []byte {
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, r := range ids {
		b = binary.AppendUvarint(b, uint64(r.Lo))
		b = binary.AppendUvarint(b, uint64(r.Hi))
	}
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// snapshotReader decodes what appendSnapshotBody wrote; the first problem
// sticks and every read after it returns zero values.
type snapshotReader struct {
	b   []byte
	err error
	// file is the last Pos.File read: every reservation of a file shares
	// one string.
	file string
}

func (d *snapshotReader) fail() {
	if d.err == nil {
		d.err = errSnapshot
	}
	d.b = nil
}

func (d *snapshotReader) uint(max uint64) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > max {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count is a length that the bytes left can hold, each item taking at
// least min bytes: a damaged length makes no huge allocation.
func (d *snapshotReader) count(min int) int {
	v := d.uint(^uint64(0))
	if v > uint64(len(d.b)/min) {
		d.fail()
		return 0
	}
	return int(v)
}

func (d *snapshotReader) bytes() []byte {
	n := d.count(1)
	if d.err != nil {
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *snapshotReader) string() string { return string(d.bytes()) }

func (d *snapshotReader) bool() bool { return d.uint(1) == 1 }

func (d *snapshotReader) ids(pool *[]model.IDRange) []model.IDRange {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	out := carve(pool, n)
	for i := range out {
		out[i] = model.IDRange{Lo: uint32(d.uint(0xffffffff)), Hi: uint32(d.uint(0xffffffff))}
	}
	return out
}

// carve takes the next n items of *pool, capped so that an append to one
// never writes into the next; a pool too small for them is made anew.
func carve[T any](pool *[]T, n int) []T {
	if len(*pool) < n {
		*pool = make([]T, max(n, 256))
	}
	out := (*pool)[:n:n]
	*pool = (*pool)[n:]
	return out
}

// decodeSnapshot reads a snapshot: its body and the generation after it.
func decodeSnapshot(b []byte) (table, digest string, r *model.Resolved, gen uint32, err error) {
	if len(b) < len(snapshotMagic) || string(b[:len(snapshotMagic)]) != snapshotMagic {
		return "", "", nil, 0, errSnapshot
	}
	d := &snapshotReader{b: b[len(snapshotMagic):]}
	table, digest = d.string(), d.string()
	r = &model.Resolved{}
	s := &r.Settings
	s.Table = d.string()
	s.AllowRoot = d.bool()
	s.PortStart.Mode = model.PortStartMode(d.uint(0xff))
	s.PortStart.Value = uint16(d.uint(0xffff))
	s.Log.Count = uint32(d.uint(0xffffffff))
	s.Log.Unit = model.RateUnit(d.uint(0xff))
	s.MarkOwned = uint32(d.uint(0xffffffff))
	s.MarkSquatted = uint32(d.uint(0xffffffff))
	s.BindGuard = model.BindGuardMode(d.uint(0xff))
	// One backing array per kind of list, shared out: a handful of
	// allocations for 10k reservations instead of several each.
	var protos []model.Protocol
	var ports []model.PortRange
	var ids []model.IDRange
	for _, list := range []*[]model.Reservation{&r.Reservations, &r.Guard} {
		n := d.count(12) // the fewest bytes a reservation takes
		if n > 0 {
			*list = make([]model.Reservation, n)
		}
		for i := range *list {
			d.reservation(&(*list)[i], &protos, &ports, &ids)
		}
	}
	if n := d.count(1); n > 0 {
		r.Warnings = make([]string, n)
		for i := range r.Warnings {
			r.Warnings[i] = d.string()
		}
	}
	gen = uint32(d.uint(0xffffffff))
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return "", "", nil, 0, d.err
	}
	return table, digest, r, gen, nil
}

func (d *snapshotReader) reservation(r *model.Reservation, protos *[]model.Protocol, ports *[]model.PortRange, ids *[]model.IDRange) {
	r.Name = d.string()
	r.Description = d.string()
	if n := d.count(1); n > 0 {
		r.Protocols = carve(protos, n)
		for i := range r.Protocols {
			r.Protocols[i] = model.Protocol(d.uint(0xff))
		}
	}
	if n := d.count(2); n > 0 {
		r.Ports = carve(ports, n)
		for i := range r.Ports {
			r.Ports[i] = model.PortRange{Lo: uint16(d.uint(0xffff)), Hi: uint16(d.uint(0xffff))}
		}
	}
	if n := d.count(6); n > 0 {
		r.Addresses = make([]netip.Prefix, n)
		for i := range r.Addresses {
			size := int(d.uint(16)) + 1 // the address's bytes and the bits
			if d.err != nil || len(d.b) < size {
				d.fail()
				return
			}
			if r.Addresses[i].UnmarshalBinary(d.b[:size]) != nil {
				d.fail()
				return
			}
			d.b = d.b[size:]
		}
	}
	r.Owners.Root = d.bool()
	r.Owners.UIDs = d.ids(ids)
	r.Owners.GIDs = d.ids(ids)
	if n := d.count(5); n > 0 {
		r.Owners.Cgroups = make([]model.Cgroup, n)
		for i := range r.Owners.Cgroups {
			c := &r.Owners.Cgroups[i]
			c.Source, c.Unit, c.Path = d.string(), d.bool(), d.string()
			c.Level, c.ID = uint8(d.uint(0xff)), d.uint(^uint64(0))
		}
	}
	if f := d.bytes(); string(f) != d.file {
		d.file = string(f)
	}
	r.Pos.File = d.file
	r.Pos.Line, r.Pos.Col = int(d.uint(1<<31)), int(d.uint(1<<31))
}
