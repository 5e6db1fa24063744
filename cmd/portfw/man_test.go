package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/portfw/portfw/testenv"
)

// The man page is made from the flag sets, so it lists every command and
// flag --help does; groff renders it without a warning.
func TestManPortfw(t *testing.T) {
	var md bytes.Buffer
	manPortfw(&md)
	for _, c := range allFlags() {
		if c.hidden {
			if strings.Contains(md.String(), "## portfw "+c.name+" ") {
				t.Errorf("hidden command %s is in the man page", c.name)
			}
			continue
		}
		if !strings.Contains(md.String(), "## portfw "+c.name+" ") {
			t.Errorf("no section for %s", c.name)
		}
		if len(c.flags) == 0 && c.name != "completion" {
			t.Errorf("%s: no flags collected", c.name)
		}
		for _, f := range c.flags {
			if !strings.Contains(md.String(), "**"+md2(flagName(f))+"**") {
				t.Errorf("%s: flag %s is not in the man page", c.name, flagName(f))
			}
		}
	}
	for _, want := range []string{envStateDir, envGuardCgroup, "PORTFW\\_PASSWD\\_FILE", "/etc/portfw/policy.d/", "# EXIT STATUS"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	render(t, "portfw", "portfw(8)", "portfw check", "--drop-in", "EXIT STATUS")
}

func md2(s string) string { return md(s) }

// runArgs runs the CLI in-process against fakes: stdout, stderr, exit code.
func runArgs(args ...string) (string, string, int) {
	code, out, errOut := run(args...)
	return out, errOut, code
}

// portfw-policy(5) is docs/policy.md: every key of the schema is in it.
func TestManPolicy(t *testing.T) {
	render(t, "policy", "portfw-policy(5)", "unprivileged_port_start", "owner.groups", "policy.d", "Errors")
}

// render runs `portfw man page`, checks groff renders it without warnings
// and that the text holds want.
func render(t *testing.T, page string, want ...string) {
	t.Helper()
	testenv.RequireTools(t, "groff")
	stdout, stderr, code := runArgs("man", page)
	if code != 0 {
		t.Fatalf("portfw man %s: exit %d: %s", page, code, stderr)
	}
	path := filepath.Join(t.TempDir(), page+".man")
	if err := os.WriteFile(path, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("groff", "-man", "-t", "-ww", "-Tutf8", path)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil || errb.Len() > 0 {
		t.Fatalf("groff: %v\n%s", err, errb.String())
	}
	text := strings.ReplaceAll(stripOverstrike(string(out)), "\u2010", "-")
	for _, w := range want {
		if !strings.Contains(strings.ToLower(text), strings.ToLower(w)) {
			t.Errorf("rendered %s lacks %q", page, w)
		}
	}
}

// stripOverstrike removes grotty's bold and underline (x\bx, _\bx).
func stripOverstrike(s string) string {
	var b strings.Builder
	r := []rune(s)
	for i := 0; i < len(r); i++ {
		if i+1 < len(r) && r[i+1] == '\b' {
			i++
			continue
		}
		b.WriteRune(r[i])
	}
	return b.String()
}

func TestManUsage(t *testing.T) {
	if _, stderr, code := runArgs("man"); code != exitUsage || !strings.Contains(stderr, "portfw or policy") {
		t.Errorf("portfw man: exit %d, %q", code, stderr)
	}
	_, stderr, _ := runArgs("help")
	if strings.Contains(stderr, " man ") {
		t.Error("the hidden man command is listed in the usage")
	}
}

// completeBash runs the bash completion function for words (the last one
// being completed) and returns its candidates.
func completeBash(t *testing.T, script string, words ...string) []string {
	t.Helper()
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, "'"+w+"'")
	}
	prog := fmt.Sprintf("%s\nCOMP_WORDS=(%s)\nCOMP_CWORD=%d\n_portfw\nprintf '%%s\\n' \"${COMPREPLY[@]}\"\n",
		script, strings.Join(quoted, " "), len(words)-1)
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", prog)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash completion: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestCompletionBash(t *testing.T) {
	script, stderr, code := runArgs("completion", "bash")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, c := range []struct {
		words []string
		want  []string
		not   []string
	}{
		{[]string{"portfw", "st"}, []string{"status"}, []string{"check"}},
		{[]string{"portfw", ""}, []string{"check", "watch", "completion", "help"}, []string{"man"}},
		{[]string{"portfw", "watch", "--met"}, []string{"--metrics-address"}, nil},
		{[]string{"portfw", "status", "--format", ""}, []string{"text", "json", "prometheus"}, nil},
		{[]string{"portfw", "watch", "-log-format", "j"}, []string{"json"}, []string{"text"}},
		{[]string{"portfw", "check", "--"}, []string{"--drop-in", "--json", "--as"}, []string{"--dry-run"}},
		{[]string{"portfw", "completion", ""}, []string{"bash", "zsh"}, nil},
		{[]string{"portfw", "watch", "--debounce", ""}, nil, []string{"--json"}},
	} {
		got := completeBash(t, script, c.words...)
		for _, w := range c.want {
			if !slices.Contains(got, w) {
				t.Errorf("%q: candidates %q lack %q", c.words, got, w)
			}
		}
		for _, w := range c.not {
			if slices.Contains(got, w) {
				t.Errorf("%q: candidates %q include %q", c.words, got, w)
			}
		}
	}
}

func TestCompletionZsh(t *testing.T) {
	testenv.RequireTools(t, "zsh")
	script, _, code := runArgs("completion", "zsh")
	if code != 0 || !strings.HasPrefix(script, "#compdef portfw\n") {
		t.Fatalf("exit %d:\n%s", code, script)
	}
	path := filepath.Join(t.TempDir(), "_portfw")
	os.WriteFile(path, []byte(script), 0o644)
	if out, err := exec.Command("zsh", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	// Loaded by compinit from an fpath directory, it defines _portfw.
	out, err := exec.Command("zsh", "-f", "-c", "fpath=("+filepath.Dir(path)+" $fpath); autoload -Uz compinit; compinit -u -d "+
		filepath.Join(t.TempDir(), "zcompdump")+"; autoload -Uz _portfw; (( $+functions[_portfw] )) && print defined; print ${_comps[portfw]}").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "defined") || !strings.Contains(string(out), "_portfw") {
		t.Fatalf("zsh did not register the completion: %v\n%s", err, out)
	}
	for _, c := range allFlags() {
		for _, f := range c.flags {
			if !c.hidden && !strings.Contains(script, "'"+flagName(f)+"[") {
				t.Errorf("%s %s not completed", c.name, flagName(f))
			}
		}
	}
	if _, stderr, code := runArgs("completion", "fish"); code != exitUsage || !strings.Contains(stderr, "bash or zsh") {
		t.Errorf("completion fish: exit %d %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runArgs("version", "--json")
	var b buildInfo
	if code != 0 || json.Unmarshal([]byte(out), &b) != nil {
		t.Fatalf("version --json: exit %d: %s", code, out)
	}
	if b.GoVersion != runtime.Version() || !b.BindGuard || b.Version == "" {
		t.Errorf("version --json = %+v", b)
	}
	text, _, _ := runArgs("version")
	if !strings.HasPrefix(text, "portfw "+b.Version+"\n") || !strings.Contains(text, runtime.Version()) || !strings.Contains(text, "bind guard: built in") {
		t.Errorf("portfw version:\n%s", text)
	}
}
