package compiler

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/portfw/portfw/model"
)

// TestSortElements: the permutation sort gives the order of a plain sort,
// element for element (each key distinct, as in a set), with and without
// addresses.
func TestSortElements(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 3, 10, 1000, -10, -1000} { // < 0: no addresses (the integer-keyed sort)
		addrs := n > 0
		n = max(n, -n)
		var es []Element
		seen := map[Element]bool{}
		for len(es) < n {
			e := Element{Proto: model.Protocol([]uint8{6, 17}[r.IntN(2)]), Ports: model.Port(uint16(r.IntN(500))),
				ID: model.ID(uint32(r.IntN(3))), Comment: fmt.Sprint("r", r.IntN(100))}
			if addrs && r.IntN(4) == 0 {
				e.Addr = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(4))}), 32)
			}
			if k := e.Key(); !seen[k] {
				seen[k] = true
				es = append(es, e)
			}
		}
		want := slices.Clone(es)
		slices.SortFunc(want, func(a, b Element) int { return compareElements(&a, &b) })
		SortElements(es)
		if !slices.Equal(es, want) {
			t.Fatalf("%d elements sorted differently", n)
		}
	}
}
