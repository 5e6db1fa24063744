// Package testpolicy compiles policies for tests against a fixed user
// database, so goldens and kernel round trips do not depend on the users
// of the machine running them.
package testpolicy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// Users is the fake user database every test policy resolves against.
var Users = resolve.Static{
	Users:  map[string]uint32{"www-data": 33, "alice": 1000, "_sipd": 5060, "_dnsd": 5353},
	Groups: map[string]uint32{"voip": 2000},
	Cgroups: resolve.StaticCgroups{
		IDs: map[string]uint64{
			"/system.slice/nginx.service":         4101,
			"/system.slice/app@1.service":         4201,
			"/system.slice/app@2.service":         4202,
			"/machine.slice/vm1.scope/payload":    4301,
			"/user.slice/user-1000.slice/x.scope": 4401,
		},
		Units: map[string][]resolve.UnitCgroup{
			"nginx.service": {{Unit: "nginx.service", Path: "/system.slice/nginx.service"}},
			"app@*.service": {{Unit: "app@1.service", Path: "/system.slice/app@1.service"}, {Unit: "app@2.service", Path: "/system.slice/app@2.service"}},
		},
	},
}

// CompileFile parses, resolves and compiles the policy at path.
func CompileFile(t testing.TB, path string) *compiler.Ruleset {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(path, data)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	r, err := resolve.Resolve(p, Users)
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	return compiler.Compile(r)
}

// Resolve parses and resolves policy text (named path in positions).
func Resolve(t testing.TB, path, text string) *model.Resolved {
	t.Helper()
	p, err := policy.Parse(path, []byte(text))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	r, err := resolve.Resolve(p, Users)
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	return r
}

// Compile writes text to a temporary policy file and compiles it.
func Compile(t testing.TB, text string) *compiler.Ruleset {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return CompileFile(t, path)
}
