package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/policy"
)

// load runs parse, resolve, plan and compile. On failure it prints every
// problem to stderr and returns the exit code; nothing touched the kernel.
func (a *app) load(path string) (*engine.Prepared, int) {
	res, pol, err := engine.Load(path, policy.System{})
	if err != nil {
		a.printPolicyError(path, err)
		return nil, exitNo
	}
	return engine.Prepare(path, pol, res), exitOK
}

// planNotes says what apply will do to the sysctls, for check.
func planNotes(l *engine.Prepared) []string {
	if l.HostErr != nil {
		return []string{fmt.Sprintf("cannot read this namespace's sysctls (%v): guard entries and sysctl changes are not shown", l.HostErr)}
	}
	n := l.Plan.Changes()
	if g := guardText(l.Plan.Guard); g != "" {
		n = append(n, "guard: "+g+" reserved for root (ports the lowered threshold opens that no reservation holds)")
	}
	return n
}

// guardText is the guard as one line: "81-442,444-1023/tcp+udp".
func guardText(g []policy.Reservation) string {
	var parts []string
	for i, r := range g {
		ports := tune.FormatPorts(r.Ports)
		if i+1 < len(g) && tune.FormatPorts(g[i+1].Ports) == ports {
			parts = append(parts, ports+"/"+string(r.Protocols[0])+"+"+string(g[i+1].Protocols[0]))
			break
		}
		parts = append(parts, ports+"/"+string(r.Protocols[0]))
	}
	return strings.Join(parts, " ")
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
		fmt.Fprintf(a.stderr, "portfw: %s: %d %s; the kernel was not touched\n", path, len(es), noun)
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
	if v, err := sysctl.Get(tune.Syncookies); err == nil && v == "2" && hasTCP {
		w = append(w, "net.ipv4.tcp_syncookies=2 (cookies always): reserved TCP ports never get syncookie SYN-ACKs "+
			"(a squatter could use them unattributed), so they may serve nothing; set it to 1")
	}
	h, err := tune.ReadHost()
	if err != nil {
		return w
	}
	rng := h.LocalPortRange
	for _, res := range r.Reservations {
		var in []string
		for _, p := range res.Ports {
			if lo, hi := max(p.Lo, rng.Lo), min(p.Hi, rng.Hi); lo <= hi {
				in = append(in, policy.PortRange{Lo: lo, Hi: hi}.String())
			}
		}
		if len(in) > 0 {
			w = append(w, fmt.Sprintf("reservation %q: ports %s are in the ephemeral range %s (%s); apply adds them to %s "+
				"so the kernel never picks them as the local port of an outgoing connection (whose traffic portfw would drop)",
				res.Name, strings.Join(in, ","), rng, tune.LocalPortRange, tune.ReservedPorts))
		}
	}
	return w
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
