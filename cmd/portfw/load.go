package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/policy"
)

// loaded is a policy taken through parse, resolve and compile.
type loaded struct {
	path     string
	policy   *policy.Policy
	resolved *policy.Resolved
	ruleset  *compiler.Ruleset
}

// load runs the pure half of the pipeline. On failure it prints every
// problem to stderr and returns the exit code; nothing touched the kernel.
func (a *app) load(path string) (*loaded, int) {
	res, pol, err := policy.Load(path, policy.System{})
	if err != nil {
		a.printPolicyError(path, err)
		return nil, exitNo
	}
	return a.loadedFrom(path, pol, res), exitOK
}

func (a *app) loadedFrom(path string, pol *policy.Policy, res *policy.Resolved) *loaded {
	return &loaded{path: path, policy: pol, resolved: res, ruleset: compiler.Compile(res)}
}

func (a *app) printPolicyError(path string, err error) {
	var es policy.Errors
	if errors.As(err, &es) {
		for _, e := range es {
			fmt.Fprintln(a.stderr, e)
		}
		noun := "problems"
		if len(es) == 1 {
			noun = "problem"
		}
		fmt.Fprintf(a.stderr, "portfw: %s: %d %s; nothing was changed\n", path, len(es), noun)
		return
	}
	fmt.Fprintf(a.stderr, "portfw: %v\n", err)
}

// warnings are what will matter at apply time but do not make a policy
// invalid. They read this network namespace's sysctls.
func warnings(r *policy.Resolved) []string {
	var w []string
	hasTCP := false
	for _, res := range r.Reservations {
		hasTCP = hasTCP || slices.Contains(res.Protocols, policy.TCP)
	}
	if v, err := sysctl.Get("net.ipv4.tcp_syncookies"); err == nil && v == "2" && hasTCP {
		w = append(w, "net.ipv4.tcp_syncookies=2 (cookies always): reserved TCP ports never get syncookie SYN-ACKs "+
			"(a squatter could use them unattributed), so they may serve nothing; set it to 1")
	}
	rng, err := sysctl.GetInts("net.ipv4.ip_local_port_range")
	if err != nil || len(rng) != 2 {
		return w
	}
	reserved := parsePortList(mustGet("net.ipv4.ip_local_reserved_ports"))
	for _, res := range r.Reservations {
		var in []string
		for _, p := range res.Ports {
			lo, hi := max(int(p.Lo), rng[0]), min(int(p.Hi), rng[1])
			if lo > hi || covered(reserved, lo, hi) {
				continue
			}
			in = append(in, policy.PortRange{Lo: uint16(lo), Hi: uint16(hi)}.String())
		}
		if len(in) > 0 {
			w = append(w, fmt.Sprintf("reservation %q: ports %s are in the ephemeral range %d-%d (net.ipv4.ip_local_port_range) "+
				"and not in net.ipv4.ip_local_reserved_ports: the kernel may give them to any process as the local port "+
				"of an outgoing connection, whose traffic portfw would then drop", res.Name, strings.Join(in, ","), rng[0], rng[1]))
		}
	}
	return w
}

func mustGet(name string) string {
	v, _ := sysctl.Get(name)
	return v
}

// parsePortList parses the kernel's "1,2,10-20" port list format.
func parsePortList(s string) []policy.PortRange {
	var out []policy.PortRange
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		l, err1 := strconv.Atoi(lo)
		h, err2 := l, error(nil)
		if isRange {
			h, err2 = strconv.Atoi(hi)
		}
		if err1 == nil && err2 == nil {
			out = append(out, policy.PortRange{Lo: uint16(l), Hi: uint16(h)})
		}
	}
	return out
}

func covered(rs []policy.PortRange, lo, hi int) bool {
	for p := lo; p <= hi; p++ {
		in := false
		for _, r := range rs {
			if int(r.Lo) <= p && p <= int(r.Hi) {
				in = true
				break
			}
		}
		if !in {
			return false
		}
	}
	return true
}

func (a *app) printWarnings(ws []string) {
	for _, w := range ws {
		fmt.Fprintln(a.stderr, "warning:", w)
	}
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
