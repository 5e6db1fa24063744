package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/resolve"
)

// runWaitOwner waits until a cgroup (by default the caller's own) owns
// reservations in this namespace's table: in a unit's ExecStartPre=, it
// closes the window between systemd making the unit's new cgroup and
// `portfw watch` putting its id in the guard and the table, in which the
// service's bind would be refused and its first packets dropped. The guard
// is updated before the table, so once the table holds the id both do.
func runWaitOwner(a *app, args []string) int {
	fs := a.flags("wait-owner")
	cgroup := fs.String("cgroup", "", "cgroup v2 `path` from the hierarchy's root (default: this process's, from /proc/self/cgroup)")
	table := fs.String("table", "", "table `name` (default: the one portfw manages here)")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	path := *cgroup
	if path == "" {
		self, err := ownCgroup()
		if err != nil {
			fmt.Fprintf(a.stderr, "portfw wait-owner: %v\n", err)
			return exitNo
		}
		path = self
	}
	sys, ok := a.resolver().(*resolve.System)
	if !ok || sys.Cgroups == nil {
		fmt.Fprintln(a.stderr, "portfw wait-owner: no cgroup hierarchy")
		return exitNo
	}
	// The cgroup and its ancestors: an owner may name a slice above it.
	var ids []uint64
	for p := path; p != "/" && p != "."; p = parentOf(p) {
		id, err := sys.Cgroups.LookupCgroup(p)
		if err != nil {
			fmt.Fprintf(a.stderr, "portfw wait-owner: %v\n", err)
			return exitNo
		}
		ids = append(ids, id)
	}
	e, err := a.host(*o)
	if err != nil {
		fmt.Fprintf(a.stderr, "portfw wait-owner: %v\n", err)
		return exitUsage
	}
	name := *table
	if name == "" {
		st, _ := e.Host.State.Load()
		name = st.Table
	}
	if name == "" {
		name = "portfw"
	}
	deadline := time.Now().Add(*timeout)
	for {
		rs, err := nft.ReadOrNil(e.Host.Tables, name)
		if err != nil {
			fmt.Fprintf(a.stderr, "portfw wait-owner: %v\n", err)
			return exitNo
		}
		if owned := ownedBy(rs, ids); len(owned) > 0 {
			fmt.Fprintf(a.stdout, "cgroup %s owns %s in table inet %s\n", path, strings.Join(owned, ", "), name)
			return exitOK
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(a.stderr, "portfw wait-owner: cgroup %s owns nothing in table inet %s after %v: does the policy name this unit or cgroup, and does `portfw watch` run in this network namespace?\n",
				path, name, *timeout)
			return exitNo
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ownedBy names the reservations whose owner sets hold one of the ids.
func ownedBy(rs *compiler.Ruleset, ids []uint64) []string {
	if rs == nil {
		return nil
	}
	var out []string
	for _, s := range rs.Sets {
		if !s.Has(compiler.FieldCgroup) {
			continue
		}
		for _, e := range s.Elements {
			if slices.Contains(ids, e.Cgroup) && !slices.Contains(out, e.Comment) {
				out = append(out, e.Comment)
			}
		}
	}
	slices.Sort(out)
	return out
}

// ownCgroup is this process's cgroup v2 path.
func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 line in /proc/self/cgroup")
}

func parentOf(p string) string {
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		return "/"
	}
	return p[:i]
}
