package state

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portfw/portfw/model"
)

func TestDirRoundTrip(t *testing.T) {
	d := Dir{Dir: t.TempDir(), Cookie: 42}
	st, err := d.Load()
	if err != nil || st.Table != "" {
		t.Fatalf("a missing state: %+v %v, want the zero state", st, err)
	}
	orig := 1024
	want := State{Table: "portfw", UnprivPortStartOriginal: &orig, ReservedPortsAdded: model.NewPorts(model.Port(40000)), Gen: 7, Digest: "abc"}
	if err := d.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := d.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.Cookie != 42 || got.Version != Version || got.Table != "portfw" || *got.UnprivPortStartOriginal != 1024 ||
		got.ReservedPortsAdded.String() != "40000" || got.Gen != 7 || got.Digest != "abc" {
		t.Errorf("round trip: %+v", got)
	}
	if fi, err := os.Stat(d.Path()); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("state file: %v %v", fi, err)
	}
	if !strings.HasSuffix(d.Path(), "netns-42.json") {
		t.Errorf("path %s, want it named by the cookie", d.Path())
	}
}

// TestDirRefusesAnotherNamespacesState: a file that names another cookie,
// or cannot be read, is corrupt, never used; Delete sets it aside.
func TestDirRefusesAnotherNamespacesState(t *testing.T) {
	dir := t.TempDir()
	other := Dir{Dir: dir, Cookie: 7}
	if err := other.Save(State{Table: "portfw"}); err != nil {
		t.Fatal(err)
	}
	d := Dir{Dir: dir, Cookie: 8}
	// A test (or an admin) copies another namespace's state into ours.
	b, _ := os.ReadFile(other.Path())
	os.WriteFile(d.Path(), b, 0o644)
	if _, err := d.Load(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "names network namespace cookie 7") {
		t.Errorf("Load of a state naming cookie 7 as cookie 8: %v", err)
	}
	os.WriteFile(d.Path(), []byte("{not json"), 0o644)
	if _, err := d.Load(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Load of garbage: %v", err)
	}
	if err := d.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Path() + ".corrupt"); err != nil {
		t.Errorf("the corrupt file was not set aside: %v", err)
	}
	if st, err := d.Load(); err != nil || st.Table != "" {
		t.Errorf("after Delete: %+v %v", st, err)
	}
}

func TestDirLock(t *testing.T) {
	d := Dir{Dir: t.TempDir(), Cookie: 9}
	unlock, err := d.Lock(0)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to open files: a second open is a second holder,
	// as another process would be.
	start := time.Now()
	_, err = d.Lock(100 * time.Millisecond)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("second Lock: %v, want ErrLocked naming pid %d", err, os.Getpid())
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Error("Lock did not wait")
	}
	unlock()
	unlock2, err := d.Lock(0)
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
	if _, err := os.Stat(filepath.Join(d.Dir, "netns-9.lock")); err != nil {
		t.Error(err)
	}
}

// remove deletes the lock file (and the empty directory) while holding it,
// its work done: a waiter then locks the path's new file, never the
// deleted one, so later lockers see it as held.
func TestDirRemoveLock(t *testing.T) {
	parent := t.TempDir()
	d := Dir{Dir: filepath.Join(parent, "portfw"), Cookie: 9}
	unlock, err := d.Lock(0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		u, err := d.Lock(5 * time.Second) // waits on the file about to be deleted
		if err != nil {
			t.Error(err)
			u = func() {}
		}
		got <- u
	}()
	time.Sleep(60 * time.Millisecond) // the waiter is polling the old file
	if err := d.RemoveLock(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.lockPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file still there: %v", err)
	}
	unlock()
	unlock2 := <-got
	if err := d.Held(); err != nil {
		t.Errorf("the waiter holds a lock that is not at the path: %v", err)
	}
	if _, err := d.Lock(0); !errors.Is(err, ErrLocked) {
		t.Errorf("a third Lock: %v, want ErrLocked (two holders)", err)
	}
	unlock2()
	if err := d.RemoveLock(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the empty state directory stays: %v", err)
	}
}
