package bindguard

import (
	"testing"

	"github.com/portfw/portfw/model"
)

// bigResolved is n reservations of one port each, tcp and udp, each owned
// by its own uid: 2n port entries and n owner entries.
func bigResolved(n int) *model.Resolved {
	r := &model.Resolved{Settings: model.Settings{AllowRoot: true}}
	for i := range n {
		r.Reservations = append(r.Reservations, model.Reservation{Name: "r", Protocols: []model.Protocol{model.TCP, model.UDP},
			Ports: []model.PortRange{model.Port(uint16(2000 + i))}, Owners: model.Owners{Root: true, UIDs: []model.IDRange{model.ID(uint32(10000 + i))}}})
	}
	return r
}

// BenchmarkEncodeBatch: a new generation's entries encoded and laid out
// for BatchUpdate, what Host.apply does between the spec and the kernel.
func BenchmarkEncodeBatch(b *testing.B) {
	spec := FromResolved(bigResolved(30000))
	b.ReportAllocs()
	for b.Loop() {
		e := encode(spec)
		for _, kvs := range [][]kv{e.ports, e.scopes, e.owners, e.ranges} {
			if len(kvs) > 0 {
				batchOf(kvs)
			}
		}
	}
}
