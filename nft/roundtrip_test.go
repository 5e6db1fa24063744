package nft_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/testenv"
)

var compileFile = testpolicy.CompileFile

func open(t testing.TB, ns *testenv.NS) *nft.Conn {
	t.Helper()
	c, err := nft.Open(ns.Fd(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func list(t testing.TB, ns *testenv.NS, table string) string {
	t.Helper()
	return ns.Run(t, "nft", "list", "table", "inet", table)
}

// TestRoundTrip: the text form loaded by `nft -f` in one namespace and
// the same ruleset applied over netlink in another give identical kernel
// listings, and reading the table back gives the compiled ruleset again.
func TestRoundTrip(t *testing.T) {
	testenv.RequireNetNS(t)
	golden, _ := filepath.Glob("../compiler/testdata/*/policy.yaml")
	if len(golden) == 0 {
		t.Fatal("no golden policies found")
	}
	for _, path := range golden {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			rs := compileFile(t, path)
			text, applied := testenv.NewNS(t), testenv.NewNS(t)
			nftFile := filepath.Join(t.TempDir(), "rs.nft")
			if err := os.WriteFile(nftFile, []byte(rs.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			text.Run(t, "nft", "-f", nftFile)
			c := open(t, applied)
			if err := c.Apply(rs); err != nil {
				t.Fatalf("apply: %v", err)
			}
			if diff := cmp.Diff(list(t, text, rs.Table), list(t, applied, rs.Table)); diff != "" {
				t.Errorf("nft -f and netlink apply disagree (-text +netlink):\n%s", diff)
			}
			back, err := c.Read(rs.Table)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if diff := cmp.Diff(rs.String(), back.String()); diff != "" {
				t.Errorf("read back differs from what was applied (-applied +read):\n%s", diff)
			}
			// The table nft -f loaded reads back the same too.
			back2, err := open(t, text).Read(rs.Table)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(rs.String(), back2.String()); diff != "" {
				t.Errorf("table loaded by nft -f reads back differently (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFailedApplyLeavesOldTable: a transaction the kernel refuses midway
// leaves the previous table exactly as it was.
func TestFailedApplyLeavesOldTable(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	c := open(t, ns)
	rs := compileFile(t, "../compiler/testdata/groups/policy.yaml")
	if err := c.Apply(rs); err != nil {
		t.Fatal(err)
	}
	before := list(t, ns, rs.Table)
	bad := compileFile(t, "../compiler/testdata/uid_ranges/policy.yaml")
	// A goto to a chain that does not exist: the kernel rejects the batch
	// at the very last rule, after the table was deleted and refilled.
	last := bad.Chains[len(bad.Chains)-1]
	last.Rules = append(last.Rules, compiler.Rule{compiler.Verdict{Kind: compiler.Goto, Chain: "no_such_chain"}})
	if err := c.Apply(bad); err == nil {
		t.Fatal("apply of a ruleset with a dangling goto succeeded")
	}
	if diff := cmp.Diff(before, list(t, ns, rs.Table)); diff != "" {
		t.Errorf("failed apply changed the table (-before +after):\n%s", diff)
	}
}

// TestOtherTablesUntouched: apply and remove touch portfw's table only.
func TestOtherTablesUntouched(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	other := filepath.Join(t.TempDir(), "other.nft")
	os.WriteFile(other, []byte(`table inet filter {
	set allowed { type ipv4_addr; elements = { 192.0.2.1 } }
	chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; ip saddr @allowed counter accept; }
}
table ip nat {
	chain post { type nat hook postrouting priority 100; oifname "lo" masquerade; }
}
table inet portfw_other { chain c { tcp dport 80 drop; }; }
`), 0o644)
	ns.Run(t, "nft", "-f", other)
	before := ns.Run(t, "nft", "list", "ruleset")
	c := open(t, ns)
	rs := compileFile(t, "../compiler/testdata/addresses/policy.yaml")
	if err := c.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(compileFile(t, "../compiler/testdata/single_port/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	all := ns.Run(t, "nft", "list", "ruleset")
	for _, want := range []string{"table inet filter", "table ip nat", "table inet portfw_other", "table inet portfw"} {
		if !strings.Contains(all, want) {
			t.Errorf("after apply, ruleset lacks %q", want)
		}
	}
	found, err := c.Remove(rs.Table)
	if err != nil || !found {
		t.Fatalf("remove: found=%v err=%v", found, err)
	}
	if diff := cmp.Diff(before, ns.Run(t, "nft", "list", "ruleset")); diff != "" {
		t.Errorf("apply+remove changed other tables (-before +after):\n%s", diff)
	}
	found, err = c.Remove(rs.Table)
	if err != nil || found {
		t.Fatalf("second remove: found=%v err=%v, want false, nil", found, err)
	}
	if _, err := c.Read(rs.Table); !errors.Is(err, nft.ErrNoTable) {
		t.Fatalf("read after remove: %v, want ErrNoTable", err)
	}
}

// TestApplyLarge: 10k reservations go in one transaction (no ENOBUFS) and
// read back intact.
func TestApplyLarge(t *testing.T) {
	testenv.RequireNetNS(t)
	var b strings.Builder
	b.WriteString("version: 1\nreservations:\n")
	for i := 0; i < 10000; i++ {
		b.WriteString("  - name: r" + strconv.Itoa(i) + "\n    ports: [" + strconv.Itoa(10000+i) + "]\n    owner: { users: [" + strconv.Itoa(100000+i) + "] }\n")
	}
	path := filepath.Join(t.TempDir(), "big.yaml")
	os.WriteFile(path, []byte(b.String()), 0o644)
	rs := compileFile(t, path)
	ns := testenv.NewNS(t)
	c := open(t, ns)
	if err := c.Apply(rs); err != nil {
		t.Fatalf("apply 10k: %v", err)
	}
	back, err := c.Read(rs.Table)
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != rs.String() {
		t.Fatal("10k table reads back differently")
	}
}
