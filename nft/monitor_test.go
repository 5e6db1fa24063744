package nft_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/testenv"
)

// TestWatchChanges: every commit is signalled, the generation tells
// portfw's own commit (the generation its Commit returned) from another
// process's, and the monitor names the other process.
func TestWatchChanges(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := nft.WatchCommits(ctx, ns.Fd(t))
	if err != nil {
		t.Fatal(err)
	}
	ch := m.C
	c := open(t, ns)
	gen, err := c.Gen()
	if err != nil {
		t.Fatal(err)
	}
	mine, err := c.Commit(new(nft.Tx).Replace(compileFile(t, "../compiler/testdata/groups/policy.yaml")), gen)
	if err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s was not signalled", what)
		}
	}
	wait("portfw's own commit")
	if now, _ := c.Gen(); now != mine {
		t.Errorf("after portfw's commit the generation is %d, Commit said %d", now, mine)
	}
	ns.Run(t, "nft", "add", "table", "inet", "someone_else")
	wait("another process's commit")
	if now, _ := c.Gen(); now == mine {
		t.Errorf("another process committed and the generation is still portfw's %d", mine)
	}
	if got := m.Since(mine); len(got) != 1 || got[0].Comm != "nft" || got[0].PID == 0 || got[0].Gen != mine+1 {
		t.Errorf("commits since portfw's: %+v, want one by nft", got)
	} else if who := got[0].Who(); !strings.HasPrefix(who, "nft (pid ") {
		t.Errorf("Who() = %q", who)
	}
	cancel()
	for range ch { // closed once ctx ends
	}
}

// TestCommitOnStaleGeneration: a transaction built on a generation another
// process has moved past is refused whole, and the kernel keeps the other
// process's change; on the current generation it goes in.
func TestCommitOnStaleGeneration(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	c := open(t, ns)
	rs := compileFile(t, "../compiler/testdata/groups/policy.yaml")
	gen, err := c.Gen()
	if err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "nft", "add", "table", "inet", "someone_else")
	before := ns.Run(t, "nft", "list", "ruleset")
	if _, err := c.Commit(new(nft.Tx).Replace(rs), gen); !errors.Is(err, nft.ErrChanged) {
		t.Fatalf("commit on a stale generation: %v, want ErrChanged", err)
	}
	if diff := cmp.Diff(before, ns.Run(t, "nft", "list", "ruleset")); diff != "" {
		t.Errorf("a refused commit changed the ruleset:\n%s", diff)
	}
	gen, _ = c.Gen()
	next, err := c.Commit(new(nft.Tx).Replace(rs).Remove("someone_else"), gen)
	if err != nil {
		t.Fatalf("commit on the current generation: %v", err)
	}
	if now, _ := c.Gen(); now != next || next == gen {
		t.Errorf("generation %d -> %d, Commit said %d", gen, now, next)
	}
	if got := ns.Run(t, "nft", "list", "tables"); got != "table inet "+rs.Table+"\n" {
		t.Errorf("tables after one transaction that replaced one and removed another:\n%s", got)
	}
}

// TestEncodingFailureSendsNothing: a transaction that fails to encode
// halfway leaves nothing queued: the next commit on the same connection
// sends only its own operations.
func TestEncodingFailureSendsNothing(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	c := open(t, ns)
	good := compileFile(t, "../compiler/testdata/groups/policy.yaml")
	bad := compileFile(t, "../compiler/testdata/uid_ranges/policy.yaml")
	bad.Table = "bad"
	// A lookup in a set the table does not declare cannot be encoded.
	undeclared := &compiler.Set{Name: "undeclared", Fields: []compiler.Field{compiler.FieldProto}}
	bad.Chains[0].Rules = append(bad.Chains[0].Rules, compiler.Rule{
		compiler.Lookup{Keys: []compiler.Key{{Kind: compiler.KeyL4Proto}}, Set: undeclared}, compiler.Verdict{Kind: compiler.Accept}})
	if _, err := c.Commit(new(nft.Tx).Replace(good).Replace(bad), 0); err == nil {
		t.Fatal("a transaction with an expression that cannot be encoded was committed")
	}
	if got := ns.Run(t, "nft", "list", "tables"); got != "" {
		t.Fatalf("a failed encoding left tables behind:\n%s", got)
	}
	if _, err := c.Commit(new(nft.Tx).Remove("nothing_here"), 0); err != nil {
		t.Fatal(err)
	}
	if got := ns.Run(t, "nft", "list", "tables"); got != "" {
		t.Errorf("the next commit sent the failed transaction's operations:\n%s", got)
	}
}
