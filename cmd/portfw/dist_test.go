package main

import (
	"bytes"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/portfw/portfw/resolve"
	"github.com/portfw/portfw/testenv"
)

// What ships in dist/ and the Containerfile runs portfw with flags and a
// policy this portfw accepts. (The DaemonSet's Kubernetes schema is
// checked in dist/kubernetes, a module of its own.)

// watchArgs parses args (after "watch") with the watch command's own flags.
func watchArgs(t *testing.T, where string, args []string) *flag.FlagSet {
	t.Helper()
	var fs *flag.FlagSet
	for _, c := range commands {
		if c.name == "watch" {
			fs = flagSet(c)
		}
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		t.Fatalf("%s: portfw watch %q: %v (stray %q)", where, args, err, fs.Args())
	}
	return fs
}

func TestDaemonSetAsShipped(t *testing.T) {
	data, err := os.ReadFile("../../dist/kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm, ds map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cm); err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(&ds); err != nil {
		t.Fatal(err)
	}
	get := func(v any, path ...any) any {
		for _, p := range path {
			switch k := p.(type) {
			case string:
				v = v.(map[string]any)[k]
			case int:
				v = v.([]any)[k]
			}
		}
		return v
	}
	spec := get(ds, "spec", "template", "spec")
	c := get(spec, "containers", 0)
	var args []string
	for _, a := range get(c, "args").([]any) {
		args = append(args, strings.ReplaceAll(a.(string), "$(NODE_IP)", "2001:db8::1"))
	}
	if args[0] != "watch" {
		t.Fatalf("args %q do not run watch", args)
	}
	fs := watchArgs(t, "daemonset.yaml", args[1:])
	if fs.Lookup("insecure-policy-perms").Value.String() != "false" {
		t.Error("the DaemonSet passes --insecure-policy-perms")
	}
	if fs.Lookup("metrics-address").Value.String() != "[2001:db8::1]:9851" {
		t.Errorf("metrics on %s", fs.Lookup("metrics-address").Value)
	}
	// The address the kubelet makes of it listens on IPv4 and IPv6 nodes.
	for _, ip := range []string{"192.0.2.1", "2001:db8::1"} {
		for _, a := range get(c, "args").([]any) {
			if v := a.(string); strings.Contains(v, "$(NODE_IP)") {
				if _, err := net.ResolveTCPAddr("tcp", strings.ReplaceAll(v, "$(NODE_IP)", ip)); err != nil {
					t.Errorf("on a node with IP %s: %v", ip, err)
				}
			}
		}
	}
	if get(c, "readinessProbe", "httpGet", "path") != "/healthz" || get(c, "ports", 0, "containerPort") != 9851 {
		t.Error("no readiness probe on /healthz at the metrics port")
	}
	if get(spec, "hostNetwork") != true || get(spec, "hostPID") != true {
		t.Error("not hostNetwork and hostPID")
	}
	caps := get(c, "securityContext", "capabilities", "add").([]any)
	for _, want := range []string{"NET_ADMIN", "BPF", "SYS_ADMIN"} {
		if !slices.Contains(caps, any(want)) {
			t.Errorf("capability %s missing (the bind guard needs it)", want)
		}
	}
	if get(c, "resources", "requests", "memory") == nil || get(c, "resources", "limits", "memory") == nil {
		t.Error("no memory request and limit")
	}
	mounts := map[string]string{}
	for _, m := range get(c, "volumeMounts").([]any) {
		mounts[get(m, "mountPath").(string)] = get(m, "name").(string)
	}
	hostPaths := map[string]string{}
	for _, v := range get(spec, "volumes").([]any) {
		if hp, ok := v.(map[string]any)["hostPath"]; ok {
			hostPaths[get(v, "name").(string)] = get(hp, "path").(string)
		}
	}
	env := map[string]string{}
	for _, e := range get(c, "env").([]any) {
		if v, ok := e.(map[string]any)["value"]; ok {
			env[get(e, "name").(string)] = v.(string)
		}
	}
	// The user database the env points at is the host's, mounted.
	if hostPaths[mounts["/host/etc"]] != "/etc" || env["PORTFW_PASSWD_FILE"] != "/host/etc/passwd" || env["PORTFW_GROUP_FILE"] != "/host/etc/group" {
		t.Errorf("the host's user database is not what names resolve through: mounts %v, host paths %v, env %v", mounts, hostPaths, env)
	}
	if hostPaths[mounts["/run/portfw"]] != "/run/portfw" {
		t.Error("the state directory is not the host's /run/portfw")
	}
	if mounts["/etc/portfw"] != "policy" {
		t.Error("the ConfigMap is not at /etc/portfw")
	}

	// The ConfigMap's policy is valid, its names resolved as the host's
	// user database would.
	path := tempPolicy(t, get(cm, "data", "policy.yaml").(string))
	f := newFakeHost()
	var out, errOut bytes.Buffer
	a := f.app(&out, &errOut)
	a.users = resolve.Static{Users: map[string]uint32{"nobody": 65534}}
	if code := a.run([]string{"check", insecure, "-f", path}); code != 0 {
		t.Errorf("the ConfigMap's policy: exit %d\n%s%s", code, out.String(), errOut.String())
	}
}

// unitLines are the values of key in the unit file.
func unitLines(unit, key string) []string {
	var out []string
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestUnitAsShipped(t *testing.T) {
	data, err := os.ReadFile("../../dist/portfw.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	start := unitLines(unit, "ExecStart")
	if len(start) != 1 || !strings.HasPrefix(start[0], "/usr/sbin/portfw watch ") {
		t.Fatalf("ExecStart = %q", start)
	}
	watchArgs(t, "portfw.service", strings.Fields(start[0])[2:])
	if pre := unitLines(unit, "ExecStartPre"); len(pre) > 0 {
		t.Errorf("ExecStartPre=%q: a pre-check fails the unit on a policy the daemon would wait out", pre)
	}
	if !slices.Contains(unitLines(unit, "After"), "nftables.service") {
		t.Error("not ordered after nftables.service, whose flush ruleset would remove the table")
	}
	if got := unitLines(unit, "Documentation"); len(got) != 1 || got[0] != "man:portfw(8) man:portfw-policy(5)" {
		t.Errorf("Documentation=%q, want the man pages portfw installs", got)
	}
	if len(unitLines(unit, "WatchdogSec")) != 1 || unitLines(unit, "Type")[0] != "notify" {
		t.Error("no WatchdogSec= with Type=notify")
	}

	// systemd-analyze verify, with the man pages it looks for and a
	// stand-in for the binary (it checks the path is executable).
	testenv.RequireTools(t, "systemd-analyze")
	dir := t.TempDir()
	for page, sect := range map[string]string{"portfw": "8", "policy": "5"} {
		out, stderr, code := runArgs("man", page)
		name := map[string]string{"portfw": "portfw", "policy": "portfw-policy"}[page]
		if code != 0 {
			t.Fatal(stderr)
		}
		os.MkdirAll(filepath.Join(dir, "man", "man"+sect), 0o755)
		os.WriteFile(filepath.Join(dir, "man", "man"+sect, name+"."+sect), []byte(out), 0o644)
	}
	unitPath := filepath.Join(dir, "portfw.service")
	os.WriteFile(unitPath, []byte(strings.ReplaceAll(unit, "/usr/sbin/portfw", "/bin/true")), 0o644)
	cmd := exec.Command("systemd-analyze", "verify", unitPath)
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(dir, "man"))
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestContainerfileCommand(t *testing.T) {
	data, err := os.ReadFile("../../Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	var cmd []string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CMD "); ok {
			if err := yaml.Unmarshal([]byte(v), &cmd); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(cmd) < 1 || cmd[0] != "watch" {
		t.Fatalf("CMD %q", cmd)
	}
	watchArgs(t, "Containerfile", cmd[1:])
}
