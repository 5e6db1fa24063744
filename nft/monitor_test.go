package nft_test

import (
	"context"
	"testing"
	"time"

	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/testenv"
)

// TestWatchChanges: commits by this process are not reported (the daemon
// knows what it did); commits by another process are, once per burst.
func TestWatchChanges(t *testing.T) {
	testenv.RequireNetNS(t)
	ns := testenv.NewNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := nft.WatchChanges(ctx, ns.Fd(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := open(t, ns).Apply(compileFile(t, "../compiler/testdata/groups/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Fatal("this process's own commit was reported as a change")
	case <-time.After(300 * time.Millisecond):
	}
	ns.Run(t, "nft", "add", "table", "inet", "someone_else")
	select {
	case <-ch:
	case <-time.After(2 * time.Second):
		t.Fatal("another process's commit was not reported")
	}
	cancel()
	for range ch { // closed once ctx ends
	}
}
