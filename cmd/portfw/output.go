package main

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/model"
)

// The JSON that check, apply, diff, status and audit print with --json is a
// stable format: fields are added, never renamed or removed, and
// outputVersion changes if a field ever has to change meaning.
const outputVersion = 1

type jsonError struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Col     int    `json:"col"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// layersJSON says which of portfw's layers enforce the policy in this
// namespace (docs/layers.md).
type layersJSON struct {
	// BindGuard: bind() to a reserved port fails with EPERM for everyone
	// but its owners.
	BindGuard bool `json:"bind_guard"`
	// BindGuardNote says why the guard is off, when it is.
	BindGuardNote string `json:"bind_guard_note,omitempty"`
	// Rules: the nftables table starves squatters of traffic.
	Rules bool `json:"rules"`
	// UnprivPortStart is net.ipv4.ip_unprivileged_port_start after apply.
	UnprivPortStart int `json:"unprivileged_port_start"`
}

func planLayers(p *engine.Plan) layersJSON {
	return layersOf(p.Guard.On, p.Guard.Mode, p.Guard.Note, p.Sysctls.Threshold)
}

func layersOf(guardOn bool, mode model.BindGuardMode, note string, threshold int) layersJSON {
	l := layersJSON{BindGuard: guardOn, Rules: true, UnprivPortStart: threshold}
	if !guardOn {
		l.BindGuardNote = note
		if mode == model.BindGuardOff {
			l.BindGuardNote = "settings.bind_guard is off"
		}
	}
	return l
}

func layersText(l layersJSON) string {
	guard, rules := "bind guard on", "nftables rules on"
	if !l.BindGuard {
		guard = "bind guard OFF"
	}
	if !l.Rules {
		rules = "nftables rules OFF"
	}
	return fmt.Sprintf("%s, %s, %s=%d", guard, rules, tune.UnprivPortStart, l.UnprivPortStart)
}

// changesJSON is the part of apply's and diff's output that says what
// changes, per reservation.
type changesJSON struct {
	Version      int      `json:"version"`
	Table        string   `json:"table"`
	Policy       string   `json:"policy"`
	DropIns      []string `json:"drop_ins"`
	InSync       bool     `json:"in_sync"`
	Applied      bool     `json:"applied"`
	Added        []string `json:"added"`
	Removed      []string `json:"removed"`
	Changed      []string `json:"changed"`
	RulesChanged bool     `json:"rules_changed"`
	// Plan says what each added, removed or changed reservation gains or
	// loses; Unlabelled are the kernel's elements of no reservation.
	Plan       []planJSON  `json:"plan"`
	Unlabelled []strayJSON `json:"unlabelled"`
	Rules      []string    `json:"rules"` // rule and setting changes, in words
	Warnings   []string    `json:"warnings"`
	Notes      []string    `json:"notes"`
}

// planJSON is compiler.Detail. Ports and ids are lists of numbers and
// {"from", "to"} ranges.
type planJSON struct {
	Name             string           `json:"name"`
	Action           compiler.Action  `json:"action"`
	PortsAdded       []protoPortsJSON `json:"ports_added"`
	PortsRemoved     []protoPortsJSON `json:"ports_removed"`
	AddressesAdded   []string         `json:"addresses_added"`
	AddressesRemoved []string         `json:"addresses_removed"`
	OwnersAdded      ownersJSON       `json:"owners_added"`
	OwnersRemoved    ownersJSON       `json:"owners_removed"`
	ElementsAdded    int              `json:"elements_added"`
	ElementsRemoved  int              `json:"elements_removed"`
}

type protoPortsJSON struct {
	Protocol model.Protocol `json:"protocol"`
	Ports    []any          `json:"ports"`
}

type ownersJSON struct {
	UIDs    []any           `json:"uids"`
	GIDs    []any           `json:"gids"`
	Cgroups []cgroupRefJSON `json:"cgroups,omitempty"`
}

// cgroupRefJSON is an owner cgroup of a plan: its id, and its path when the
// policy names it.
type cgroupRefJSON struct {
	ID   uint64 `json:"id"`
	Path string `json:"path,omitempty"`
}

func cgroupRefsJSON(cs []compiler.CgroupRef) []cgroupRefJSON {
	var out []cgroupRefJSON
	for _, c := range cs {
		out = append(out, cgroupRefJSON{c.ID, c.Path})
	}
	return out
}

// rangeJSON is a range of ports or ids of more than one.
type rangeJSON struct {
	From uint32 `json:"from"`
	To   uint32 `json:"to"`
}

// strayJSON is an element of no reservation: its set and nft's text of it.
type strayJSON struct {
	Set     string `json:"set"`
	Element string `json:"element"`
}

func rangesJSON[R model.PortRange | model.IDRange](rs []R) []any {
	out := make([]any, 0, len(rs))
	for _, r := range rs {
		var lo, hi uint32
		switch r := any(r).(type) {
		case model.PortRange:
			lo, hi = uint32(r.Lo), uint32(r.Hi)
		case model.IDRange:
			lo, hi = r.Lo, r.Hi
		}
		if lo == hi {
			out = append(out, lo)
		} else {
			out = append(out, rangeJSON{lo, hi})
		}
	}
	return out
}

func newChangesJSON(p *engine.Plan, c compiler.Changes, applied bool) changesJSON {
	out := changesJSON{
		Version: outputVersion, Table: p.Table, Policy: p.Path, DropIns: []string{}, InSync: c.InSync(), Applied: applied,
		Added: nonNil(c.Added), Removed: nonNil(c.Removed), Changed: nonNil(c.Changed),
		RulesChanged: c.RulesChanged, Warnings: nonNil(p.Warnings()), Notes: nonNil(p.Notes()),
		Plan: []planJSON{}, Unlabelled: []strayJSON{},
	}
	if p.Policy != nil {
		out.DropIns = nonNil(p.Policy.DropIns)
	}
	plan := c.Plan()
	for _, d := range plan.Reservations {
		out.Plan = append(out.Plan, planJSON{Name: d.Name, Action: d.Action,
			PortsAdded: protoPortsOf(d.PortsAdded), PortsRemoved: protoPortsOf(d.PortsRemoved),
			AddressesAdded: prefixTexts(d.AddressesAdded), AddressesRemoved: prefixTexts(d.AddressesRemoved),
			OwnersAdded:   ownersJSON{rangesJSON(d.UIDsAdded), rangesJSON(d.GIDsAdded), cgroupRefsJSON(d.CgroupsAdded)},
			OwnersRemoved: ownersJSON{rangesJSON(d.UIDsRemoved), rangesJSON(d.GIDsRemoved), cgroupRefsJSON(d.CgroupsRemoved)},
			ElementsAdded: d.ElementsAdded, ElementsRemoved: d.ElementsRemoved})
	}
	for _, s := range plan.Unlabelled {
		text := s.String()
		out.Unlabelled = append(out.Unlabelled, strayJSON{s.Set, strings.TrimSuffix(strings.TrimPrefix(text, s.Set+" { "), " }")})
	}
	out.Rules = nonNil(plan.Rules)
	return out
}

func protoPortsOf(pps []compiler.ProtoPorts) []protoPortsJSON {
	out := make([]protoPortsJSON, 0, len(pps))
	for _, pp := range pps {
		out = append(out, protoPortsJSON{pp.Protocol, rangesJSON(pp.Ports)})
	}
	return out
}

func prefixTexts(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// printChanges prints what apply does (or would do), reservation by
// reservation, as a plan: "~ web: +8443/tcp, owners -uid 1001".
func (a *app) printChanges(c compiler.Changes) {
	plan := c.Plan()
	sign := map[compiler.Action]string{compiler.ActionAdd: "+", compiler.ActionRemove: "-", compiler.ActionChange: "~"}
	// One write per 64 KiB, not one per line, and each line appended to
	// one buffer (fmt took 13 ms more at 10k): a fresh apply of 100k
	// reservations prints 100k lines.
	w := bufio.NewWriterSize(a.stdout, 64<<10)
	defer w.Flush()
	var line []byte
	for _, d := range plan.Reservations {
		line = append(append(append(line[:0], "  "...), sign[d.Action]...), ' ')
		line = append(d.AppendTo(line), '\n')
		w.Write(line)
	}
	for _, s := range plan.Unlabelled {
		fmt.Fprintf(w, "  - element %s (in the table but of no reservation: added by hand?)\n", s)
	}
	for _, r := range plan.Rules {
		fmt.Fprintf(w, "  ~ rules: %s\n", r)
	}
}

func summary(c compiler.Changes) string {
	if c.InSync() {
		return "table unchanged"
	}
	s := fmt.Sprintf("%d added, %d removed, %d changed", len(c.Added), len(c.Removed), len(c.Changed))
	if c.Unlabelled > 0 {
		s += fmt.Sprintf(", %d elements of no reservation", c.Unlabelled)
	}
	if c.RulesChanged {
		s += ", rules changed"
	}
	return s
}

// guardText is the root-only guard as one line: "81-442,444-1023/tcp+udp".
func guardText(g []model.Reservation) string {
	byPorts := map[string][]string{}
	var order []string
	for _, r := range g {
		ports := model.Ports(r.Ports).String()
		if _, ok := byPorts[ports]; !ok {
			order = append(order, ports)
		}
		for _, p := range r.Protocols {
			byPorts[ports] = append(byPorts[ports], p.String())
		}
	}
	parts := make([]string, len(order))
	for i, ports := range order {
		parts[i] = ports + "/" + strings.Join(byPorts[ports], "+")
	}
	return strings.Join(parts, " ")
}

// bindGuardJSON is the guard's part of apply's and status's JSON.
type bindGuardJSON struct {
	Mode       string   `json:"mode,omitempty"` // settings.bind_guard, when a policy was read
	Installed  bool     `json:"installed"`      // portfw's programs are attached
	Active     bool     `json:"active"`         // and hold this namespace's policy
	Cgroup     string   `json:"cgroup,omitempty"`
	Namespaces int      `json:"namespaces"` // network namespaces the programs guard
	Ports      int      `json:"ports"`      // guarded (protocol, port) pairs here
	Scopes     int      `json:"scopes"`     // address-scoped entries here
	ProgramIDs []uint32 `json:"program_ids,omitempty"`
	Foreign    []string `json:"foreign,omitempty"`
	// Note says why the guard cannot run here.
	Note string `json:"note,omitempty"`
}

func newBindGuardJSON(mode string, info bindguard.Info) *bindGuardJSON {
	return &bindGuardJSON{Mode: mode, Installed: info.Attached, Active: info.Active, Cgroup: info.Cgroup,
		Namespaces: info.Namespaces, Ports: info.Ports, Scopes: info.Scopes, ProgramIDs: info.ProgramIDs, Foreign: info.Foreign}
}

func describeBindGuard(g *bindGuardJSON) string {
	if !g.Active {
		if g.Installed {
			return fmt.Sprintf("not active in this namespace (its programs on cgroup %s guard %d other namespaces)", g.Cgroup, g.Namespaces)
		}
		return "not installed"
	}
	s := fmt.Sprintf("on for cgroup %s, %d guarded ports", g.Cgroup, g.Ports)
	if g.Scopes > 0 {
		s += fmt.Sprintf(" (%d address scopes)", g.Scopes)
	}
	if g.Namespaces > 1 {
		s += fmt.Sprintf("; its programs guard %d network namespaces", g.Namespaces)
	}
	return s
}

// squatterJSON is a socket of a non-owner on a reserved port.
type squatterJSON = audit.Finding

func (a *app) printSquatters(fs []audit.Finding) {
	for _, f := range fs {
		fmt.Fprintf(a.stdout, "  SQUATTER: %s (bound before the guard could refuse it: its traffic is dropped; stop it)\n", f)
	}
}
