package bench_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// BenchmarkPlan: what a fresh apply prints, every reservation's detail
// worked out from the table (compiler.Changes.Plan).
func BenchmarkPlan(b *testing.B) {
	for _, n := range sizes {
		rs := compiler.Compile(resolved(b, n))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				// A Changes computes its Plan once: a new one each time
				// (Diff against no table lists names only, ~1% of this).
				compiler.Diff(nil, rs).Plan()
			}
		})
	}
}

// BenchmarkPlanCreated: the same plan as apply works it out for a table
// it creates, from the resolved policy (compiler.Created).
func BenchmarkPlanCreated(b *testing.B) {
	for _, n := range sizes {
		r := resolved(b, n)
		rs := compiler.Compile(r)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				compiler.Created(r, rs).Plan()
			}
		})
	}
}

// BenchmarkPlanText: the lines a fresh apply prints, one per reservation
// (Detail.AppendTo, as printChanges writes them).
func BenchmarkPlanText(b *testing.B) {
	for _, n := range sizes {
		r := resolved(b, n)
		plan := compiler.Created(r, compiler.Compile(r)).Plan()
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			w := bufio.NewWriterSize(io.Discard, 64<<10)
			var line []byte
			for b.Loop() {
				for _, d := range plan.Reservations {
					line = append(d.AppendTo(append(line[:0], "  + "...)), '\n')
					w.Write(line)
				}
				w.Flush()
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

// BenchmarkResolveNames: a policy naming 1000 distinct users, resolved
// again with the same /etc/passwd (as a reload does): the parsed database
// is kept while the file's identity is unchanged (target: <= 5 ms).
func BenchmarkResolveNames(b *testing.B) {
	dir := b.TempDir()
	var pw, pol strings.Builder
	pol.WriteString("version: 1\nreservations:\n")
	for i := range 1000 {
		fmt.Fprintf(&pw, "user%04d:x:%d:%d::/:/bin/sh\n", i, 20000+i, 20000+i)
		fmt.Fprintf(&pol, "  - { name: r%04d, ports: [%d], owner: { users: [user%04d] } }\n", i, 10000+i, i)
	}
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(passwd, []byte(pw.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(group, []byte("root:x:0:\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	p, err := policy.Parse("names.yaml", []byte(pol.String()))
	if err != nil {
		b.Fatal(err)
	}
	sys := resolve.NewSystem(passwd, group)
	if _, err := resolve.Resolve(p, sys); err != nil { // the first load reads the file
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := resolve.Resolve(p, sys); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReloadLoad: what the daemon's reload does before the engine, at
// one owner edit per reload: read the file, parse the changed reservation,
// resolve it, reuse the rest (resolve.Loader).
func BenchmarkReloadLoad(b *testing.B) {
	for _, n := range sizes {
		data := spec(n).YAML(nil)
		edited := []byte(strings.Replace(string(data), "users: [2500]", "users: [2500, 9999]", 1))
		if string(edited) == string(data) {
			b.Fatal("the edit changed nothing")
		}
		path := filepath.Join(b.TempDir(), "policy.yaml")
		l := resolve.NewLoader(resolve.Static{})
		load := func(d []byte) {
			if err := os.WriteFile(path, d, 0o644); err != nil {
				b.Fatal(err)
			}
			if _, _, err := l.Load([]string{path}); err != nil {
				b.Fatal(err)
			}
		}
		load(data)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if i%2 == 1 {
					load(edited)
				} else {
					load(data)
				}
			}
		})
	}
}

// BenchmarkSummarize: status's per-reservation view of a table.
func BenchmarkSummarize(b *testing.B) {
	for _, n := range sizes {
		rs := compiler.Compile(resolved(b, n))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				compiler.Summarize(rs)
			}
		})
	}
}
