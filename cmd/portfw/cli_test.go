package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/resolve"
)

// The in-process tests run the CLI against fakes of the host: they never
// touch this machine's nftables, sysctls, state or bind guard.

type fakeHost struct {
	tables *nft.Fake
	sys    *sysctl.Fake
	store  *state.Mem
	guard  *bindguard.Fake
	socks  []audit.Socket
}

func newFakeHost() *fakeHost {
	return &fakeHost{tables: nft.NewFake(), sys: sysctl.NewFake(), store: &state.Mem{Holder: 4242}, guard: &bindguard.Fake{}}
}

func (f *fakeHost) app(out, errOut *bytes.Buffer) *app {
	a := newApp(out, errOut)
	a.getenv = func(string) string { return "" }
	a.users = resolve.Static{Users: map[string]uint32{"www-data": 33, "alice": 1000}}
	a.host = func(hostOptions) (*engine.Engine, error) {
		return &engine.Engine{Host: engine.Host{Tables: f.tables, Sysctls: f.sys, State: f.store, Lock: f.store, Guard: f.guard,
			Sockets: func() ([]audit.Socket, error) { return f.socks, nil }}}, nil
	}
	return a
}

// run runs the CLI in-process and returns its exit code and output.
func (f *fakeHost) run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = f.app(&out, &errOut).run(args)
	return code, out.String(), errOut.String()
}

func run(args ...string) (int, string, string) { return newFakeHost().run(args...) }

func tempPolicy(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// insecure skips the permission check, for tests run by a user who owns
// their temporary files.
const insecure = "--insecure-policy-perms"

const validPolicy = "version: 1\nreservations:\n  - name: web\n    ports: [8080, 8443]\n    protocols: [tcp]\n    owner: { users: [0, 1000] }\n"

func TestCheck(t *testing.T) {
	code, out, _ := run("check", insecure, "-f", tempPolicy(t, validPolicy))
	if code != 0 || !strings.Contains(out, "valid: 1 reservations") || !strings.Contains(out, "layers: bind guard on, nftables rules on") {
		t.Errorf("check of a valid policy: exit %d, %q", code, out)
	}
	bad := tempPolicy(t, "version: 1\nreservations:\n  - name: web\n    ports: [0, 70000]\n    owner: {}\n")
	code, out, errOut := run("check", insecure, "--file", bad)
	if code != 1 || out != "" {
		t.Errorf("check of a bad policy: exit %d, stdout %q", code, out)
	}
	for _, want := range []string{
		bad + ":4:13: reservations[0].ports[0]: port 0 is out of range 1..65535",
		bad + ":4:16: reservations[0].ports[1]: port 70000 is out of range 1..65535",
		bad + ":5:12: reservations[0].owner: empty",
		"3 problems",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("check stderr lacks %q:\n%s", want, errOut)
		}
	}
}

// TestCheckSaysWhatApplyWould: check reads the namespace as apply would:
// a starved ephemeral range is an error, the guard's absence a note.
func TestCheckSaysWhatApplyWould(t *testing.T) {
	f := newFakeHost()
	f.guard.Unsupported = bindguard.ErrNotSupported
	code, out, errOut := f.run("check", insecure, "-f", tempPolicy(t, "version: 1\nreservations:\n  - name: web\n    ports: [80]\n    owner: { users: [www-data] }\n"))
	if code != 0 || !strings.Contains(out, "bind guard OFF") || !strings.Contains(errOut, "bind guard off: bind guard not supported") ||
		!strings.Contains(out, "note: net.ipv4.ip_unprivileged_port_start stays 1024: without the bind guard") {
		t.Errorf("check without a guard: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = run("check", insecure, "-f", tempPolicy(t, "version: 1\nreservations:\n  - name: all\n    ports: [\"30000-65535\"]\n    owner: { users: [www-data] }\n"))
	if code != 1 || !strings.Contains(errOut, "too few ephemeral ports left") || !strings.Contains(errOut, "policy.yaml:3:5 (28232 ports)") {
		t.Errorf("check of a policy starving the ephemeral range: exit %d, %q", code, errOut)
	}
}

func TestCheckJSON(t *testing.T) {
	bad := tempPolicy(t, "version: 2\n")
	code, out, _ := run("check", insecure, "-f", bad, "--json")
	var got struct {
		Version int  `json:"version"`
		Valid   bool `json:"valid"`
		Errors  []struct {
			File           string
			Line, Col      int
			Field, Message string
		} `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	if code != 1 || got.Valid || got.Version != 1 || len(got.Errors) != 1 || got.Errors[0].Line != 1 || got.Errors[0].Field != "version" {
		t.Errorf("check --json of a bad policy: exit %d, %+v", code, got)
	}
	code, out, _ = run("check", insecure, "-f", tempPolicy(t, validPolicy), "--json")
	if code != 0 || !strings.Contains(out, `"valid": true`) || !strings.Contains(out, `"reservations": 1`) || !strings.Contains(out, `"bind_guard": true`) {
		t.Errorf("check --json of a valid policy: exit %d\n%s", code, out)
	}
}

// TestCheckPermissions: check refuses what apply refuses.
func TestCheckPermissions(t *testing.T) {
	path := tempPolicy(t, validPolicy)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"check", "apply"} {
		code, _, errOut := run(cmd, "-f", path)
		if code != 1 || !strings.Contains(errOut, path) || !strings.Contains(errOut, "writable") {
			t.Errorf("%s of a world-writable policy: exit %d, %q", cmd, code, errOut)
		}
	}
}

func TestCompile(t *testing.T) {
	code, out, _ := run("compile", "-f", tempPolicy(t, validPolicy))
	if code != 0 || !strings.HasPrefix(out, "table inet portfw\ndelete table inet portfw\n") ||
		!strings.Contains(out, `tcp . 8443 . 1000 comment "web"`) {
		t.Errorf("compile: exit %d\n%s", code, out)
	}
	if code, _, errOut := run("compile", "-f", filepath.Join(t.TempDir(), "missing.yaml")); code != 1 || !strings.Contains(errOut, "missing.yaml") {
		t.Errorf("compile of a missing file: exit %d, %q", code, errOut)
	}
}

// TestApplyDiffStatusRemove: the lifecycle through the engine, on fakes.
func TestApplyDiffStatusRemove(t *testing.T) {
	f := newFakeHost()
	path := tempPolicy(t, validPolicy)
	if code, _, _ := f.run("diff", insecure, "-f", path); code != 1 {
		t.Errorf("diff before apply: exit %d, want 1", code)
	}
	code, out, errOut := f.run("apply", insecure, "-f", path)
	if code != 0 || !strings.Contains(out, "applied "+path+" to table inet portfw: 1 reservations (1 added, 0 removed, 0 changed, rules changed)") ||
		!strings.Contains(out, "bind guard: on for cgroup /") {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, _ := f.run("apply", insecure, "-f", path); code != 0 || !strings.Contains(out, "nothing to do") {
		t.Errorf("second apply: exit %d %q", code, out)
	}
	if code, _, _ := f.run("diff", insecure, "-f", path); code != 0 {
		t.Errorf("diff after apply: exit %d, want 0", code)
	}
	code, out, _ = f.run("apply", insecure, "-f", path, "--json")
	var aj struct {
		Version   int  `json:"version"`
		InSync    bool `json:"in_sync"`
		ReadTable bool `json:"read_table"`
		Layers    struct {
			BindGuard bool `json:"bind_guard"`
		} `json:"layers"`
		BindGuard struct {
			Active bool `json:"active"`
		} `json:"bind_guard"`
	}
	if err := json.Unmarshal([]byte(out), &aj); err != nil || code != 0 || aj.Version != 1 || !aj.InSync || aj.ReadTable || !aj.Layers.BindGuard || !aj.BindGuard.Active {
		t.Errorf("apply --json in sync: exit %d %+v %v\n%s", code, aj, err, out)
	}
	code, out, _ = f.run("status", "-f", path, "--json")
	if code != 0 || !strings.Contains(out, `"installed": true`) || !strings.Contains(out, `"in_sync": true`) || !strings.Contains(out, `"active": true`) {
		t.Errorf("status --json: exit %d\n%s", code, out)
	}
	// remove needs no policy, and takes the guard too.
	code, out, _ = f.run("remove", "-f", filepath.Join(t.TempDir(), "gone.yaml"))
	if code != 0 || !strings.Contains(out, "removed table inet portfw") || !strings.Contains(out, "removed this namespace's bind guard") {
		t.Errorf("remove without a policy: exit %d\n%s", code, out)
	}
	if len(f.tables.Tables()) != 0 || f.guard.Spec() != nil {
		t.Errorf("after remove: tables %v guard %v", f.tables.Tables(), f.guard.Spec())
	}
}

// TestRemoveWithBrokenPolicy: a policy that does not load is no reason to
// keep portfw's changes.
func TestRemoveWithBrokenPolicy(t *testing.T) {
	f := newFakeHost()
	good := tempPolicy(t, strings.Replace(validPolicy, "version: 1\n", "version: 1\nsettings: {table: mine}\n", 1))
	if code, out, errOut := f.run("apply", insecure, "-f", good); code != 0 {
		t.Fatalf("apply: %d %s%s", code, out, errOut)
	}
	broken := tempPolicy(t, "version: 1\nreservations: [oops\n")
	code, out, _ := f.run("remove", "-f", broken)
	if code != 0 || !strings.Contains(out, "removed table inet mine") {
		t.Errorf("remove with a broken policy: exit %d\n%s", code, out)
	}
}

// TestApplyReportsSquatters: sockets of non-owners bound before the guard
// went in are reported, in text and JSON.
func TestApplyReportsSquatters(t *testing.T) {
	f := newFakeHost()
	f.socks = []audit.Socket{{Protocol: model.TCP, Addr: netip.IPv4Unspecified(), Port: 8080, UID: 1001, User: "bob", Inode: 9,
		Processes: []audit.Process{{PID: 77, Command: "nc"}}}}
	code, out, _ := f.run("apply", insecure, "-f", tempPolicy(t, validPolicy))
	if code != 0 || !strings.Contains(out, "SQUATTER: tcp 0.0.0.0:8080 uid 1001 (bob), reservation web, held by 77 nc") {
		t.Errorf("apply with a squatter: exit %d\n%s", code, out)
	}
	code, out, _ = f.run("apply", insecure, "-f", tempPolicy(t, validPolicy), "--json")
	if code != 0 || !strings.Contains(out, `"squatters": [`) || !strings.Contains(out, `"uid": 1001`) {
		t.Errorf("apply --json with a squatter: exit %d\n%s", code, out)
	}
}

// TestApplyWhileLocked: a one-shot command fails, naming the holder.
func TestApplyWhileLocked(t *testing.T) {
	f := newFakeHost()
	unlock, err := f.store.Lock(0)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	code, _, errOut := f.run("apply", insecure, "-f", tempPolicy(t, validPolicy))
	if code != 1 || !strings.Contains(errOut, "another portfw (pid 4242) manages this network namespace") {
		t.Errorf("apply while locked: exit %d %q", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	if code, _, errOut := run(); code != 2 || !strings.Contains(errOut, "Commands:") {
		t.Errorf("no arguments: exit %d, %q", code, errOut)
	}
	if code, _, errOut := run("frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
	if code, out, _ := run("help"); code != 0 || !strings.Contains(out, "watch") || !strings.Contains(out, "Exit codes:") {
		t.Errorf("help: exit %d, %q", code, out)
	}
	if code, _, errOut := run("check", "--no-such-flag"); code != 2 || !strings.Contains(errOut, "Usage: portfw check") {
		t.Errorf("bad flag: exit %d, %q", code, errOut)
	}
	if code, _, errOut := run("check", "stray"); code != 2 || !strings.Contains(errOut, `unexpected argument "stray"`) {
		t.Errorf("stray argument: exit %d, %q", code, errOut)
	}
	if code, out, _ := run("version"); code != 0 || !strings.HasPrefix(out, "portfw ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

// countingUsers is a user database that says when it changed and counts
// its lookups: a parse of the policy looks alice up, a skipped one does not.
type countingUsers struct {
	resolve.Static
	stamp   string
	lookups int
}

func (c *countingUsers) LookupUser(name string) (uint32, error) {
	c.lookups++
	return c.Static.LookupUser(name)
}

func (c *countingUsers) Stamp() any { return c.stamp }

// TestApplyUnchangedSkipsParse: an apply whose inputs (the file, the user
// database, the options) are those of the last sync, with no commit by
// anyone since, the same sysctls and the guard in place, has nothing to do
// and does not even parse the policy; any of those changing makes it apply
// in full.
func TestApplyUnchangedSkipsParse(t *testing.T) {
	f := newFakeHost()
	users := &countingUsers{Static: resolve.Static{Users: map[string]uint32{"alice": 1000, "bob": 1001}}, stamp: "1"}
	apply := func(path string) (int, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		a := f.app(&out, &errOut)
		a.users = users
		code := a.run([]string{"apply", insecure, "-f", path})
		return code, out.String() + errOut.String()
	}
	path := tempPolicy(t, "version: 1\nreservations:\n  - name: web\n    ports: [8080]\n    owner: { users: [alice] }\n")
	step := func(what string, wantParse bool, wantOut string) {
		t.Helper()
		before := users.lookups
		code, out := apply(path)
		if code != 0 || !strings.Contains(out, wantOut) {
			t.Fatalf("%s: exit %d, want output with %q:\n%s", what, code, wantOut, out)
		}
		if parsed := users.lookups > before; parsed != wantParse {
			t.Errorf("%s: parsed %v, want %v", what, parsed, wantParse)
		}
	}
	step("first apply", true, "applied")
	step("the same again", false, "nothing to do")
	step("and again", false, "nothing to do")
	os.WriteFile(path, []byte("version: 1\nreservations:\n  - name: web\n    ports: [8080]\n    owner: { users: [bob] }\n"), 0o644)
	step("the file changed", true, "applied")
	step("unchanged since", false, "nothing to do")
	users.stamp = "2"
	step("the user database changed", true, "nothing to do")
	step("unchanged since", false, "nothing to do")
	f.sys.Set("net.ipv4.ip_local_port_range", "40000\t60999")
	step("a sysctl changed", true, "nothing to do")
	f.tables.Tamper("other", func(*compiler.Ruleset) *compiler.Ruleset { return &compiler.Ruleset{Table: "other"} })
	step("someone committed", true, "nothing to do")
	f.guard.Remove()
	step("the guard went", true, "bind guard: on")
	step("unchanged since", false, "nothing to do")
	if f.guard.Spec() == nil {
		t.Error("the guard was not put back")
	}
}
