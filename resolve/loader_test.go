package resolve

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/portfw/portfw/testenv"
)

// TestLoaderEqualsLoad: after every edit, the Loader's result (which
// resolves only what changed) is Load's; a changed user database makes it
// resolve names again.
func TestLoaderEqualsLoad(t *testing.T) {
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	group := filepath.Join(dir, "group")
	write := func(path, text string) { t.Helper(); testenv.ReplaceFile(t, path, text) }
	write(passwd, "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n")
	write(group, "root:x:0:\nvoip:x:2000:\n")
	path := filepath.Join(dir, "policy.yaml")
	items := make([]string, 20)
	for i := range items {
		owner := []string{"users: [alice]", "users: [bob, 5000]", "groups: [voip]", `users: ["3000-3010"]`}[i%4]
		items[i] = fmt.Sprintf("  - name: r%02d\n    ports: [%d]\n    owner: { %s }\n", i, 10000+i, owner)
	}
	text := func() string { return "version: 1\nreservations:\n" + strings.Join(items, "") }
	sys := NewSystem(passwd, group)
	l := NewLoader(sys)
	check := func(what string) {
		t.Helper()
		write(path, text())
		got, gotPol, gotErr := l.Load([]string{path})
		want, wantPol, wantErr := Load(path, NewSystem(passwd, group))
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotPol, wantPol) {
			t.Fatalf("after %s: the Loader differs from Load\n got %+v %v\nwant %+v %v", what, got, gotErr, want, wantErr)
		}
	}
	check("the first version")
	items[3] = strings.Replace(items[3], "10003", "10103", 1)
	check("a port edit")
	if l.reused != 19 {
		t.Errorf("a one-port edit reused %d of 20 reservations, want 19", l.reused)
	}
	items[5] = strings.Replace(items[5], "bob", "alice", 1)
	check("an owner edit")
	items = append(items[:7], items[8:]...)
	check("a deletion")
	items[2] = "  - name: r02\n    ports: [10004]\n    owner: { users: [alice] }\n"
	check("an overlap")
	items[2] = "  - name: r02\n    ports: [10002]\n    owner: { users: [carol] }\n"
	check("an unknown user")
	// carol appears: nothing in the policy changed, the database did.
	write(passwd, "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\nbob:x:1001:1001::/:/bin/sh\ncarol:x:1002:1002::/:/bin/sh\n")
	check("carol's creation")
	before := l.reused
	check("nothing changed")
	if l.reused-before != len(items) {
		t.Errorf("an unchanged file reused %d of %d reservations", l.reused-before, len(items))
	}
	// alice is renumbered: every reservation naming her changes.
	write(passwd, "root:x:0:0::/:/bin/sh\nalice:x:1100:1000::/:/bin/sh\nbob:x:1001:1001::/:/bin/sh\ncarol:x:1002:1002::/:/bin/sh\n")
	check("alice's renumbering")
}
