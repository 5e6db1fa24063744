package compiler_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
	"github.com/portfw/portfw/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*/want.nft from the compiler's output")

var compileFile = testpolicy.CompileFile

func goldenDirs(t *testing.T) []string {
	dirs, err := filepath.Glob("testdata/*/policy.yaml")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for i := range dirs {
		dirs[i] = filepath.Dir(dirs[i])
	}
	return dirs
}

func TestGolden(t *testing.T) {
	for _, dir := range goldenDirs(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			got := compileFile(t, filepath.Join(dir, "policy.yaml")).String()
			// Deterministic: a second compile gives the same bytes.
			if again := compileFile(t, filepath.Join(dir, "policy.yaml")).String(); again != got {
				t.Fatal("two compiles of the same policy differ")
			}
			want := filepath.Join(dir, "want.nft")
			if *update {
				if err := os.WriteFile(want, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			w, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (run go test ./compiler -update to create it)", err)
			}
			if diff := cmp.Diff(string(w), got); diff != "" {
				t.Errorf("compile %s (-want +got):\n%s", dir, diff)
			}
		})
	}
}

// TestGoldenAcceptedByNft checks every golden file with `nft -c -f` (the
// kernel's own parser and a dry-run transaction) in a throwaway namespace.
func TestGoldenAcceptedByNft(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	for _, dir := range goldenDirs(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			file := filepath.Join(dir, "want.nft")
			args := []string{"nft", "-c", "-f", file}
			if paths := cgroupPaths(t, file); len(paths) > 0 {
				// nft resolves a cgroup path by stat under /sys/fs/cgroup:
				// the golden's made-up cgroups are directories of a tmpfs
				// mounted there in a mount namespace of nft's own.
				script := "mount -t tmpfs tmpfs /sys/fs/cgroup"
				for _, p := range paths {
					script += " && mkdir -p '/sys/fs/cgroup/" + p + "'"
				}
				args = []string{"unshare", "--mount", "sh", "-c", script + " && nft -c -f " + file}
			}
			if _, stderr, err := ns.Exec(args...); err != nil {
				t.Fatalf("nft -c -f %s/want.nft: %v\n%s", dir, err, stderr)
			}
		})
	}
}

// cgroupPaths are the quoted cgroup paths of a golden's elements.
func cgroupPaths(t *testing.T, file string) []string {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile(`\. "([^"]+)" comment`).FindAllStringSubmatch(string(data), -1) {
		out = append(out, m[1])
	}
	return out
}

// bigPolicy writes a policy of n single-port reservations, each owned by its
// own uid, plus a few ranges.
func bigPolicy(t testing.TB, n int) string {
	var b strings.Builder
	b.WriteString("version: 1\nreservations:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - name: r%d\n    ports: [%d]\n    owner: { users: [%d] }\n", i, 10000+i, 100000+i)
	}
	for i := 0; i < 4; i++ {
		fmt.Fprintf(&b, "  - name: range%d\n    ports: [\"%d-%d\"]\n    owner: { users: [\"%d-%d\"] }\n", i, 40000+i*100, 40099+i*100, 200000+i*100, 200099+i*100)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func ruleCount(rs *compiler.Ruleset) (rules, chains int) {
	for _, c := range rs.Chains {
		rules += len(c.Rules)
	}
	return rules, len(rs.Chains)
}

// TestScaleRulesConstant: 10k reservations compile to the same rules as 1;
// only set elements grow, and exact keys stay out of interval sets.
func TestScaleRulesConstant(t *testing.T) {
	one := compileFile(t, bigPolicy(t, 1))
	big := compileFile(t, bigPolicy(t, 10000))
	r1, c1 := ruleCount(one)
	r2, c2 := ruleCount(big)
	if r1 != r2 || c1 != c2 {
		t.Fatalf("1 reservation: %d rules in %d chains; 10000: %d rules in %d chains", r1, c1, r2, c2)
	}
	for _, s := range big.Sets {
		if s.Interval && len(s.Elements) > 8 {
			t.Errorf("interval set %s has %d elements; only the 4 range reservations (x2 protocols) belong there", s.Name, len(s.Elements))
		}
		if s.Dynamic {
			if len(s.Elements) != 0 {
				t.Errorf("count set %s compiled with %d elements; the kernel adds them", s.Name, len(s.Elements))
			}
			continue
		}
		if !s.Interval && len(s.Elements) != 20000 {
			t.Errorf("hash set %s has %d elements, want 20000 (10k ports x tcp,udp)", s.Name, len(s.Elements))
		}
	}
	if testing.Short() {
		return
	}
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	path := filepath.Join(t.TempDir(), "big.nft")
	if err := os.WriteFile(path, []byte(big.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := ns.Exec("nft", "-c", "-f", path); err != nil {
		t.Fatalf("nft -c -f (10k reservations): %v\n%s", err, stderr)
	}
}
