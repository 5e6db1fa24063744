package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// dropIn is a drop-in reserving port for the owner on TCP and UDP.
func dropIn(name string, port int, uid uint32) string {
	return fmt.Sprintf("version: 1\nreservations:\n  - name: %s\n    ports: [%d]\n    owner: { users: [%d] }\n", name, port, uid)
}

// writeFile writes text at path, 0644, making its directory (0755).
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// enforced checks with real traffic that port, a drop-in's, is the
// owner's in the server namespace: with the guard a squatter's bind is
// refused on both protocols; with the rules alone a squatter that binds
// reads nothing over TCP and no reply of its reaches the client over UDP
// (it does read the first datagram of a flow: the residual of
// docs/layers.md, asserted in attacks_e2e_test.go). The owner is served.
func (w *world) enforced(t *testing.T, guard bool, port uint16) {
	t.Helper()
	if guard {
		for _, proto := range []testenv.Proto{testenv.TCP, testenv.UDP} {
			if got := w.Server.TryBind(t, proto, any6(port), w.squat); got != "EPERM" {
				t.Errorf("squatter bind of %d/%s: %s, want EPERM", port, proto, got)
			}
		}
	} else {
		for _, proto := range []testenv.Proto{testenv.TCP, testenv.UDP} {
			sq := w.Server.Serve(t, testenv.ServeConfig{Proto: proto, Addr: any6(port), As: w.squat})
			testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: proto, Addr: w.v4(port)}))
			if got := sq.Received(t); len(got) != 0 && proto == testenv.TCP {
				t.Errorf("squatter on %d/%s read %q", port, proto, got)
			}
			sq.Stop(t)
		}
	}
	srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(port)}), fmt.Sprintf("hello from %d", w.owner.UID))
	srv.Stop(t)
}

// TestWatchDropIns: the daemon reloads when a drop-in is added (policy.d
// made after it started), edited in place, replaced by rename, renamed,
// broken, and removed; an invalid drop-in keeps the last good policy and
// is reported at its own file:line:col. Each enforced port is checked
// with traffic, with and without the guard.
func TestWatchDropIns(t *testing.T) {
	layers(t, func(t *testing.T, guard bool, settings string) {
		w := setupVia(t, viaIPNetnsExec, "")
		path := writePolicy(t, w.policy(settings))
		dropIns := filepath.Join(filepath.Dir(path), "policy.d")
		d := startDaemon(t, viaIPNetnsExec, w.Server, path)
		applied := 1 // the daemon logs "applied" per commit
		next := func(what string) {
			t.Helper()
			applied++
			d.waitLog("applied", applied)
			if t.Failed() {
				t.Fatalf("after %s", what)
			}
		}

		// policy.d did not exist when the daemon started.
		writeFile(t, filepath.Join(dropIns, ".50-app.yaml.tmp"), dropIn("app", 7443, w.owner.UID))
		if err := os.Rename(filepath.Join(dropIns, ".50-app.yaml.tmp"), filepath.Join(dropIns, "50-app.yaml")); err != nil {
			t.Fatal(err)
		}
		next("a drop-in added")
		if !tableHas(t, w.Server, `tcp . 7443 comment "app"`) {
			t.Fatal("the new drop-in's reservation is not in the table")
		}
		w.enforced(t, guard, 7443)

		writeFile(t, filepath.Join(dropIns, "50-app.yaml"), dropIn("app", 7444, w.owner.UID))
		next("a drop-in edited in place")
		if tableHas(t, w.Server, "7443") || !tableHas(t, w.Server, `tcp . 7444 comment "app"`) {
			t.Fatal("the edit is not in the table")
		}
		w.enforced(t, guard, 7444)

		replace(t, filepath.Join(dropIns, "50-app.yaml"), "version: 1\nsettings: { allow_root: false }\nreservations: []\n")
		d.waitLog("policy rejected; still enforcing the last good policy", 1)
		d.waitLog(filepath.Join(dropIns, "50-app.yaml")+":2:1: settings: a drop-in holds only version and reservations", 1)
		if !tableHas(t, w.Server, `tcp . 7444 comment "app"`) {
			t.Fatal("an invalid drop-in changed the table")
		}
		w.enforced(t, guard, 7444)

		replace(t, filepath.Join(dropIns, "50-app.yaml"), dropIn("app", 7445, w.owner.UID))
		next("the drop-in fixed")
		if err := os.Rename(filepath.Join(dropIns, "50-app.yaml"), filepath.Join(dropIns, "50-app.yaml.disabled")); err != nil {
			t.Fatal(err)
		}
		next("the drop-in renamed away")
		if tableHas(t, w.Server, `comment "app"`) {
			t.Fatal("a drop-in renamed to .disabled is still enforced")
		}
		if err := os.Rename(filepath.Join(dropIns, "50-app.yaml.disabled"), filepath.Join(dropIns, "60-app.yaml")); err != nil {
			t.Fatal(err)
		}
		next("the drop-in renamed back")
		w.enforced(t, guard, 7445)
		if err := os.Remove(filepath.Join(dropIns, "60-app.yaml")); err != nil {
			t.Fatal(err)
		}
		next("the drop-in removed")
		if tableHas(t, w.Server, `comment "app"`) {
			t.Fatal("a removed drop-in is still enforced")
		}
		if !tableHas(t, w.Server, `tcp . 8443 comment "web"`) {
			t.Fatal("the main file's reservations are gone")
		}
	})
}

// TestWatchConfigMapDropIns: a ConfigMap with the main file and a drop-in
// (items with path policy.d/50-app.yaml) is mounted as
// policy.yaml -> ..data/policy.yaml and policy.d -> ..data/policy.d; an
// update swaps ..data, replacing the directory policy.d points into.
func TestWatchConfigMapDropIns(t *testing.T) {
	w := setup(t, "")
	dir := t.TempDir()
	version := func(name string, port int) {
		writeFile(t, filepath.Join(dir, name, "policy.yaml"), w.policy(""))
		writeFile(t, filepath.Join(dir, name, "policy.d", "50-app.yaml"), dropIn("app", port, w.owner.UID))
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, "..2026_old")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_11_24_01", 7443)
	for _, l := range []string{"policy.yaml", "policy.d"} {
		if err := os.Symlink("..data/"+l, filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "policy.yaml")
	d := startDaemon(t, viaIPNetnsExec, w.Server, path)
	if !tableHas(t, w.Server, `tcp . 7443 comment "app"`) {
		t.Fatal("the ConfigMap's drop-in was not applied at start")
	}
	version("..2026_11_24_02", 7444)
	d.waitLog(`reason="file changed"`, 1)
	if !tableHas(t, w.Server, `tcp . 7444 comment "app"`) {
		t.Fatal("the ConfigMap's updated drop-in was not applied")
	}
	// The old version's directory is gone: the next update must still be
	// seen (the watch follows policy.d into the new one).
	if err := os.RemoveAll(filepath.Join(dir, "..2026_11_24_01")); err != nil {
		t.Fatal(err)
	}
	version("..2026_11_24_03", 7445)
	d.waitLog(`reason="file changed"`, 2)
	// The removal above is an event of its own, so the update may be the
	// second reload or a later one: wait for the table, not for a count
	// (a count read after the awaited line was logged waits forever).
	for deadline := time.Now().Add(5 * time.Second); !tableHas(t, w.Server, `tcp . 7445 comment "app"`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the ConfigMap's second update was not applied within 5 s:\n%s", d.logText())
		}
	}
	w.enforced(t, true, 7445)
}

// TestDropInCommands: check, compile, apply and diff read the drop-ins;
// check --drop-in validates a file about to be installed (Ansible's
// validate) against the rest of the policy; errors name both files.
func TestDropInCommands(t *testing.T) {
	w := setup(t, "")
	path := writePolicy(t, w.policy(""))
	dropIns := filepath.Join(filepath.Dir(path), "policy.d")
	writeFile(t, filepath.Join(dropIns, "50-app.yaml"), dropIn("app", 7443, w.owner.UID))

	out := mustPortfw(t, w.Server, "check", "-f", path)
	if !strings.Contains(out, path+" + 1 drop-in: valid: 4 reservations") {
		t.Errorf("check:\n%s", out)
	}
	if out := mustPortfw(t, w.Server, "compile", "-f", path); !strings.Contains(out, `tcp . 7443 comment "app"`) {
		t.Errorf("compile lacks the drop-in's reservation:\n%s", out)
	}
	out, _, code := portfw(t, w.Server, "diff", "-f", path)
	if code != 1 || !strings.Contains(out, "+ app: 7443/tcp+udp, owners uid "+fmt.Sprint(w.owner.UID)) {
		t.Errorf("diff before apply (exit %d):\n%s", code, out)
	}
	mustPortfw(t, w.Server, "apply", "-f", path)
	w.enforced(t, true, 7443)
	if _, _, code := portfw(t, w.Server, "diff", "-f", path); code != 0 {
		t.Errorf("diff after apply: exit %d, want 0", code)
	}

	// A new version of the drop-in, checked before it is installed.
	tmp := filepath.Join(t.TempDir(), "tmpXYZ")
	writeFile(t, tmp, dropIn("app", 7444, w.owner.UID))
	if out, errOut, code := portfw(t, w.Server, "check", "-f", path, "--drop-in", tmp, "--as", "50-app.yaml"); code != 0 {
		t.Errorf("check --drop-in of a good replacement: exit %d\n%s%s", code, out, errOut)
	}
	// Installed beside the old one instead, its reservation clashes.
	out, errOut, code := portfw(t, w.Server, "check", "-f", path, "--drop-in", tmp, "--as", "60-app.yaml", "--json")
	var res checkJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("check --json: %v\n%s%s", err, out, errOut)
	}
	if code != 1 || res.Valid || len(res.Errors) != 1 || res.Errors[0].File != tmp ||
		!strings.Contains(res.Errors[0].Message, `duplicate reservation name "app" (first at `+filepath.Join(dropIns, "50-app.yaml")+":3:11") {
		t.Errorf("check --drop-in of a clashing drop-in: exit %d %+v", code, res)
	}
	// Settings in a drop-in.
	writeFile(t, tmp, "version: 1\nsettings: { table: other }\nreservations: []\n")
	_, errOut, code = portfw(t, w.Server, "check", "--drop-in", tmp, "--as", "70-x.yaml", "-f", path)
	if code != 1 || !strings.Contains(errOut, tmp+":2:1: settings: a drop-in holds only version and reservations") {
		t.Errorf("check of a drop-in with settings: exit %d\n%s", code, errOut)
	}
	// A temporary file's name is no drop-in's: --as is needed.
	if _, errOut, code := portfw(t, w.Server, "check", "--drop-in", tmp, "-f", path); code != 2 || !strings.Contains(errOut, "--as") {
		t.Errorf("check --drop-in of a file not named *.yaml without --as: exit %d\n%s", code, errOut)
	}
	// A drop-in anyone can write is refused, and nothing is touched.
	if err := os.Chmod(filepath.Join(dropIns, "50-app.yaml"), 0o666); err != nil {
		t.Fatal(err)
	}
	before := w.Server.Run(t, "nft", "list", "table", "inet", "portfw")
	_, errOut, code = portfw(t, w.Server, "apply", "-f", path)
	if code == 0 || !strings.Contains(errOut, filepath.Join(dropIns, "50-app.yaml")+" is writable by group and others") {
		t.Errorf("apply with a world-writable drop-in: exit %d\n%s", code, errOut)
	}
	if after := w.Server.Run(t, "nft", "list", "table", "inet", "portfw"); after != before {
		t.Error("a refused apply changed the table")
	}
}
