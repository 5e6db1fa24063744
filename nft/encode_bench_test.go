package nft

import (
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"

	"github.com/portfw/portfw/bench/gen"
	"github.com/portfw/portfw/compiler"
)

// BenchmarkQueueReplace: a fresh 10k table encoded and queued on a
// connection, the part of a commit before its sendmsg.
func BenchmarkQueueReplace(b *testing.B) {
	r, err := gen.Spec{N: 10000, Ranges: 4, Port: 11111, UID: 65534}.Resolved()
	if err != nil {
		b.Fatal(err)
	}
	rs := compiler.Compile(r)
	tx := new(Tx)
	tx.Replace(rs)
	for b.Loop() {
		nc, err := nftables.New(nftables.WithTestDial(func([]netlink.Message) ([]netlink.Message, error) { return nil, nil }))
		if err != nil {
			b.Fatal(err)
		}
		e, err := encodeTx(tx)
		if err != nil {
			b.Fatal(err)
		}
		for _, st := range e.steps {
			if err := st.queue(nc); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkStage: the same, queued as Tx.Encode does, the sets on every
// CPU.
func BenchmarkStage(b *testing.B) {
	r, err := gen.Spec{N: 10000, Ranges: 4, Port: 11111, UID: 65534}.Resolved()
	if err != nil {
		b.Fatal(err)
	}
	tx := new(Tx).Replace(compiler.Compile(r))
	for b.Loop() {
		if err := tx.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}
