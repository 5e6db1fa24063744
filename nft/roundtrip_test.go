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
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
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
			if hasCgroups(rs) {
				// The golden's cgroup ids are made up, and nft takes only
				// paths of cgroups that exist: TestRoundTripCgroups loads
				// real ones as text.
				applyAndReadBack(t, rs)
				return
			}
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

func hasCgroups(rs *compiler.Ruleset) bool {
	for _, s := range rs.Sets {
		if s.Has(compiler.FieldCgroup) {
			return true
		}
	}
	return false
}

// kernelText is the text form of what the kernel holds of rs: cgroups by
// id, not by path.
func kernelText(rs *compiler.Ruleset) string {
	cp := *rs
	cp.Sets = nil
	for _, s := range rs.Sets {
		s2 := *s
		s2.Elements = nil
		for _, e := range s.Elements {
			e.CgroupPath = ""
			s2.Elements = append(s2.Elements, e)
		}
		cp.Sets = append(cp.Sets, &s2)
	}
	return cp.String()
}

func applyAndReadBack(t *testing.T, rs *compiler.Ruleset) *testenv.NS {
	t.Helper()
	ns := testenv.NewNS(t)
	c := open(t, ns)
	// Encoded ahead, as a sync that waits for the guard does (Commit
	// encodes it itself elsewhere).
	tx := new(nft.Tx).Replace(rs)
	if err := tx.Encode(); err != nil {
		t.Fatalf("encode: %v", err)
	}
	gen, err := c.Commit(tx, 0)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	// Committed again, the same tx is queued again (its first commit
	// took the messages Encode queued): a second, identical replace.
	if again, err := c.Commit(tx, gen); err != nil || again == gen {
		t.Fatalf("the same tx committed again: generation %d after %d, %v", again, gen, err)
	}
	back, err := c.Read(rs.Table)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if diff := cmp.Diff(kernelText(rs), back.String()); diff != "" {
		t.Errorf("read back differs from what was applied (-applied +read):\n%s", diff)
	}
	return ns
}

// TestRoundTripCgroups: owners that are real cgroups (three levels, with
// ranges and addresses) load the same from the text form, where nft
// resolves each path under /sys/fs/cgroup itself, and over netlink, where
// portfw sends the ids it resolved.
func TestRoundTripCgroups(t *testing.T) {
	testenv.RequireNetNS(t)
	top := testenv.NewCgroup(t, nil)
	mid := testenv.NewCgroup(t, top)
	leaf := testenv.NewCgroup(t, mid)
	policyText := `version: 1
reservations:
  - name: one
    ports: [80, "8000-8009"]
    owner: { cgroups: [` + top.Path + `] }
  - name: two
    ports: [5900]
    protocols: [tcp]
    owner: { cgroups: [` + mid.Path + `, ` + leaf.Path + `], users: [alice] }
  - name: three
    ports: [53]
    owner: { cgroups: [` + leaf.Path + `] }
    addresses: [192.0.2.53, "2001:db8::53"]
`
	p, err := policy.Parse("p.yaml", []byte(policyText))
	if err != nil {
		t.Fatal(err)
	}
	sys := resolve.NewSystem("", "")
	sys.Cgroups = &resolve.HostCgroups{}
	r, err := resolve.Resolve(p, resolve.Static{Users: testpolicy.Users.Users, Cgroups: mustCgroups(t, sys)})
	if err != nil {
		t.Fatal(err)
	}
	rs := compiler.Compile(r)
	for _, want := range []string{"own_cg1", "own_cg1_r", "own_cg2", "own_cg3", "own4_cg3", "own6_cg3", "cg_only"} {
		if !strings.Contains(rs.String(), "set "+want+" {") {
			t.Fatalf("compiled ruleset has no set %s:\n%s", want, rs)
		}
	}
	applied := applyAndReadBack(t, rs)
	text := testenv.NewNS(t)
	nftFile := filepath.Join(t.TempDir(), "rs.nft")
	if err := os.WriteFile(nftFile, []byte(rs.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	// nft resolves cgroup paths under /sys/fs/cgroup: mount the cgroup v2
	// hierarchy there in a mount namespace of its own (on a hybrid host it
	// is at /sys/fs/cgroup/unified, and ip netns exec remounts /sys).
	text.Run(t, "unshare", "--mount", "sh", "-c", "mount -t cgroup2 cgroup2 /sys/fs/cgroup && nft -f "+nftFile)
	if diff := cmp.Diff(list(t, text, rs.Table), list(t, applied, rs.Table)); diff != "" {
		t.Errorf("nft -f and netlink apply disagree (-text +netlink):\n%s", diff)
	}
	back, err := open(t, text).Read(rs.Table)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kernelText(rs), back.String()); diff != "" {
		t.Errorf("table loaded by nft -f reads back differently (-want +got):\n%s", diff)
	}
}

func mustCgroups(t *testing.T, s *resolve.System) resolve.Cgroups {
	t.Helper()
	cg, err := s.CgroupOwners()
	if err != nil {
		t.Fatal(err)
	}
	return cg
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
	applyAndReadBack(t, compileFile(t, path))
}

// TestSetsMadeWithCapacity: the exact sets are made with their Capacity
// (nft as the oracle), and a delta past it is refused whole with ErrFull.
func TestSetsMadeWithCapacity(t *testing.T) {
	testenv.RequireNetNS(t)
	rs := testpolicy.Compile(t, "version: 1\nreservations:\n  - name: web\n    ports: [80, 443]\n    owner: { users: [33] }\n")
	ns := testenv.NewNS(t)
	c := open(t, ns)
	if err := c.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "nft", "list", "set", "inet", rs.Table, "res_port"); !strings.Contains(out, "size 256") {
		t.Fatalf("res_port made without its size:\n%s", out)
	}
	var res *compiler.Set
	for _, s := range rs.Sets {
		if s.Name == "res_port" {
			res = s
		}
	}
	add := func(n int) compiler.Delta {
		d := compiler.Delta{Table: rs.Table, Sets: map[string]*compiler.Set{res.Name: res}, Add: map[string][]compiler.Element{}}
		for i := range n {
			d.Add[res.Name] = append(d.Add[res.Name], compiler.Element{Proto: model.UDP, Ports: model.Port(uint16(20000 + i)), Comment: "more"})
		}
		return d
	}
	before := list(t, ns, rs.Table)
	if err := c.ApplyDelta(add(300)); !errors.Is(err, nft.ErrFull) {
		t.Fatalf("300 more elements into a set of 256: %v, want ErrFull", err)
	}
	if after := list(t, ns, rs.Table); after != before {
		t.Fatalf("a refused delta changed the table:\n%s", after)
	}
	if err := c.ApplyDelta(add(200)); err != nil {
		t.Fatalf("200 more elements into a set of 256 holding 4: %v", err)
	}
}
