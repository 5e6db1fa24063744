package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run runs the CLI in-process and returns its exit code and output.
func run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = (&app{stdout: &out, stderr: &errOut}).run(args)
	return code, out.String(), errOut.String()
}

func tempPolicy(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const validPolicy = "version: 1\nreservations:\n  - name: web\n    ports: [8080, 8443]\n    protocols: [tcp]\n    owner: { users: [0, 1000] }\n"

func TestCheck(t *testing.T) {
	code, out, _ := run("check", "-f", tempPolicy(t, validPolicy))
	if code != 0 || !strings.Contains(out, "valid: 1 reservations") {
		t.Errorf("check of a valid policy: exit %d, %q", code, out)
	}
	bad := tempPolicy(t, "version: 1\nreservations:\n  - name: web\n    ports: [0, 70000]\n    owner: {}\n")
	code, out, errOut := run("check", "--file", bad)
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

func TestCheckJSON(t *testing.T) {
	bad := tempPolicy(t, "version: 2\n")
	code, out, _ := run("check", "-f", bad, "--json")
	var got struct {
		Valid  bool `json:"valid"`
		Errors []struct {
			File           string
			Line, Col      int
			Field, Message string
		} `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	if code != 1 || got.Valid || len(got.Errors) != 1 || got.Errors[0].Line != 1 || got.Errors[0].Field != "version" {
		t.Errorf("check --json of a bad policy: exit %d, %+v", code, got)
	}
	code, out, _ = run("check", "-f", tempPolicy(t, validPolicy), "--json")
	if code != 0 || !strings.Contains(out, `"valid": true`) || !strings.Contains(out, `"reservations": 1`) {
		t.Errorf("check --json of a valid policy: exit %d\n%s", code, out)
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

func TestUsage(t *testing.T) {
	if code, _, errOut := run(); code != 2 || !strings.Contains(errOut, "Commands:") {
		t.Errorf("no arguments: exit %d, %q", code, errOut)
	}
	if code, _, errOut := run("frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
	if code, out, _ := run("help"); code != 0 || !strings.Contains(out, "watch") {
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

// TestApplyRefusesWritablePolicy: whoever can write the policy decides who
// owns which port, so apply refuses a file others can write, before
// touching the kernel.
func TestApplyRefusesWritablePolicy(t *testing.T) {
	path := tempPolicy(t, validPolicy)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run("apply", "-f", path)
	if code != 1 || !strings.Contains(errOut, path) || !strings.Contains(errOut, "writable") {
		t.Errorf("apply of a world-writable policy: exit %d, %q", code, errOut)
	}
}
