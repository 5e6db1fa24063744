package bench_test

import (
	"fmt"
	"testing"

	"github.com/portfw/portfw/bindguard"
)

// BenchmarkGuardSpec: the bind guard's spec of a policy
// (bindguard.FromResolved), which every apply of a changed policy makes.
func BenchmarkGuardSpec(b *testing.B) {
	for _, n := range sizes {
		r := resolved(b, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bindguard.FromResolved(r)
			}
		})
	}
}
