package bench_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/portfw/portfw/bench/gen"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// sizes are the policies of the datapath benchmark: N exact reservations
// plus 4 port ranges owned by uid ranges.
var sizes = []int{1000, 10000}

func spec(n int) gen.Spec { return gen.Spec{N: n, Ranges: 4, Port: 11111, UID: 65534} }

func resolved(b *testing.B, n int) *model.Resolved {
	b.Helper()
	r, err := spec(n).Resolved()
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkParseResolve: the policy file to ids, the first step of every
// apply and reload.
func BenchmarkParseResolve(b *testing.B) {
	for _, n := range sizes {
		data := spec(n).YAML(nil)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				p, err := policy.Parse("bench.yaml", data)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := resolve.Resolve(p, resolve.Static{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCompile: compiler.Compile alone (target: <= 50 ms at 10k).
func BenchmarkCompile(b *testing.B) {
	for _, n := range sizes {
		r := resolved(b, n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				compiler.Compile(r)
			}
		})
	}
}

// BenchmarkString: the nft text form (`portfw compile`).
func BenchmarkString(b *testing.B) {
	for _, n := range sizes {
		rs := compiler.Compile(resolved(b, n))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				_ = rs.String()
			}
		})
	}
}

// editOwner is r with one reservation's owner changed: a membership-only
// edit, the kind the daemon applies as an element delta.
func editOwner(r *model.Resolved) *model.Resolved {
	e := *r
	e.Reservations = slices.Clone(r.Reservations)
	i := slices.IndexFunc(e.Reservations, func(x model.Reservation) bool { return x.Name == "r00001" })
	e.Reservations[i].Owners.UIDs = []model.IDRange{model.ID(77777)}
	return &e
}

// BenchmarkDiff: compiler.Diff of two same-size rulesets one owner apart,
// which apply and every reload compute against the table read back.
func BenchmarkDiff(b *testing.B) {
	for _, n := range sizes {
		r := resolved(b, n)
		old, new := compiler.Compile(r), compiler.Compile(editOwner(r))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if compiler.Diff(old, new).InSync() {
					b.Fatal("no change found")
				}
			}
		})
	}
}

// BenchmarkElementDelta: the element changes for one owner edit.
func BenchmarkElementDelta(b *testing.B) {
	for _, n := range sizes {
		r := resolved(b, n)
		old, new := compiler.Compile(r), compiler.Compile(editOwner(r))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if d, ok := compiler.ElementDelta(old, new); !ok || d.Empty() {
					b.Fatal("no element delta")
				}
			}
		})
	}
}
