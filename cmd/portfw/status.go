package main

import (
	"bufio"
	"flag"
	"fmt"
	"github.com/portfw/portfw/audit"
	"os"
	"strings"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/metrics"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/model"
)

type statusJSON struct {
	Version      int               `json:"version"`
	Table        string            `json:"table"`
	Installed    bool              `json:"installed"`
	Policy       string            `json:"policy,omitempty"`
	InSync       *bool             `json:"in_sync,omitempty"`
	Reservations []reservationJSON `json:"reservations"`
	Guard        *reservationJSON  `json:"guard,omitempty"`
	// Unlabelled are the table's elements of no reservation (added by
	// hand), as one pseudo-reservation.
	Unlabelled *reservationJSON  `json:"unlabelled,omitempty"`
	Sysctls    *sysctlsJSON      `json:"sysctls,omitempty"`
	BindGuard  *bindGuardJSON    `json:"bind_guard,omitempty"`
	Changes    *tableChangesJSON `json:"changes,omitempty"`
	// Layers is what is in force in this namespace now, read from the
	// kernel (apply's and check's are what the policy asks for).
	Layers     layersJSON `json:"layers"`
	StateError string     `json:"state_error,omitempty"`
}

// reservationJSON is a reservation as the kernel's table holds it.
type reservationJSON struct {
	Name  string   `json:"name"`
	Ports []string `json:"ports"`          // "80,443/tcp", "5060,5070-5079/tcp+udp", "80/tcp@192.0.2.10"
	UIDs  []string `json:"uids,omitempty"` // "33", "1200-1299"
	GIDs  []string `json:"gids,omitempty"`
	// Cgroups are the owner cgroups the table holds (units and cgroups),
	// Waiting those the last sync found not running.
	Cgroups        []cgroupJSON `json:"cgroups,omitempty"`
	Waiting        []string     `json:"waiting,omitempty"`
	DroppedPackets uint64       `json:"dropped_packets"` // both directions
	DroppedBytes   uint64       `json:"dropped_bytes"`
	// In: to a squatter's port (and SYNs with data); out: from it.
	DroppedInPackets  uint64 `json:"dropped_in_packets"`
	DroppedInBytes    uint64 `json:"dropped_in_bytes"`
	DroppedOutPackets uint64 `json:"dropped_out_packets"`
	DroppedOutBytes   uint64 `json:"dropped_out_bytes"`
}

func newReservationJSON(s compiler.Summary) reservationJSON {
	r := reservationJSON{Name: s.Name, DroppedPackets: s.DroppedPackets, DroppedBytes: s.DroppedBytes,
		DroppedInPackets: s.DroppedIn.Packets, DroppedInBytes: s.DroppedIn.Bytes, DroppedOutPackets: s.DroppedOut.Packets, DroppedOutBytes: s.DroppedOut.Bytes}
	for _, g := range s.Ports {
		r.Ports = append(r.Ports, g.String())
	}
	for _, id := range s.UIDs {
		r.UIDs = append(r.UIDs, id.String())
	}
	for _, id := range s.GIDs {
		r.GIDs = append(r.GIDs, id.String())
	}
	return r
}

// cgroupJSON is an owner cgroup: its id as the table holds it, and its path
// and unit as the hierarchy names it now ("" when it was removed since).
type cgroupJSON struct {
	ID   uint64 `json:"id"`
	Path string `json:"path"`
	Unit string `json:"unit,omitempty"`
}

func (c cgroupJSON) String() string {
	switch {
	case c.Unit != "":
		return c.Unit
	case c.Path != "":
		return "cgroup " + c.Path
	}
	return fmt.Sprintf("cgroup id %d (removed)", c.ID)
}

// tableChangesJSON is what applying the policy would change in the table.
type tableChangesJSON struct {
	Added        []string `json:"added"` // reservation names, sorted
	Removed      []string `json:"removed"`
	Changed      []string `json:"changed"`
	RulesChanged bool     `json:"rules_changed"` // chains or set declarations differ
	Unlabelled   int      `json:"unlabelled"`    // elements of no reservation (added by hand)
}

// sysctlsJSON is the state of the sysctls portfw manages in this namespace.
type sysctlsJSON struct {
	UnprivPortStart         int    `json:"ip_unprivileged_port_start"`
	UnprivPortStartOriginal *int   `json:"ip_unprivileged_port_start_original"` // null: portfw has not changed it
	LocalPortRange          string `json:"ip_local_port_range"`
	ReservedPorts           string `json:"ip_local_reserved_ports"`
	ReservedPortsAdded      string `json:"ip_local_reserved_ports_added"` // by portfw
}

// policyFor loads the policy a status or remove is about: the one given
// with -f, or the default one when it exists; nil when there is none or it
// does not load (remove never needs a valid policy).
func (a *app) policyFor(fs *flag.FlagSet, path string) (*loaded, error) {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "f" || f.Name == "file" })
	if !given {
		if _, err := os.Stat(path); err != nil {
			return nil, nil
		}
	}
	l, err := a.load(path, true)
	if err != nil && given {
		return nil, err
	}
	return l, nil
}

func tableGiven(fs *flag.FlagSet) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "table" })
	return given
}

func runStatus(a *app, args []string) int {
	fs := a.flags("status")
	path := fileFlag(fs)
	table := fs.String("table", "", "table `name` (default: the policy's, else the one portfw manages here)")
	asJSON := fs.Bool("json", false, "print the status as JSON (same as --format json)")
	format := fs.String("format", "text", "output `format`: text, json, or prometheus (the drop counters and state, for node_exporter's textfile collector)")
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	switch *format {
	case "text", "json", "prometheus":
	default:
		fmt.Fprintf(a.stderr, "portfw status: --format must be text, json or prometheus, not %q\n", *format)
		return exitUsage
	}
	if *asJSON {
		*format = "json"
	}
	l, err := a.policyFor(fs, *path)
	if err != nil {
		a.printError("status", *path, err)
		return exitNo
	}
	e, err := a.host(*o)
	if err != nil {
		a.printError("status", *path, err)
		return exitUsage
	}
	var p *engine.Plan
	name := *table
	if l != nil {
		if p, err = e.Prepare(l.path, l.policy, l.resolved); err != nil {
			a.printWarnings([]string{err.Error()})
			p = nil
		} else if !tableGiven(fs) {
			name = p.Table
		}
	}
	s, err := e.Status(name)
	if err != nil {
		a.printError("status", *path, err)
		return exitUsage
	}
	if name == "" {
		name = s.State.Table
		if name == "" {
			name = model.DefaultTable
		}
	}
	st := statusJSON{Version: outputVersion, Table: name, Installed: s.Table != nil, Reservations: []reservationJSON{}}
	if s.Table != nil {
		var tree audit.Cgroups // read once, for the first reservation with owner cgroups
		treeRead := false
		var waiting map[string][]string
		if s.State.Summary != nil {
			waiting = s.State.Summary.Waiting
		}
		for _, sum := range compiler.Summarize(s.Table) {
			r := newReservationJSON(sum)
			if !treeRead && len(sum.Cgroups) > 0 && e.Host.Cgroups != nil {
				treeRead = true
				tree, _ = e.Host.Cgroups() // without it (the zero Cgroups), ids alone
			}
			for _, id := range sum.Cgroups {
				c := cgroupJSON{ID: id}
				if path, ok := tree.Path(id); ok {
					c.Path, c.Unit = path, audit.UnitOf(path)
				}
				r.Cgroups = append(r.Cgroups, c)
			}
			r.Waiting = waiting[r.Name]
			switch r.Name {
			case model.GuardName:
				st.Guard = &r
				continue
			case compiler.Unlabelled:
				st.Unlabelled = &r
				continue
			}
			st.Reservations = append(st.Reservations, r)
		}
	}
	if s.HostErr == nil {
		h := s.Host
		st.Sysctls = &sysctlsJSON{UnprivPortStart: h.UnprivPortStart, UnprivPortStartOriginal: s.State.UnprivPortStartOriginal,
			LocalPortRange: h.LocalPortRange.String(), ReservedPorts: h.ReservedPorts.String(), ReservedPortsAdded: s.State.ReservedPortsAdded.String()}
	}
	if s.StateErr != nil {
		st.StateError = s.StateErr.Error()
	}
	mode := ""
	if p != nil {
		mode = p.Guard.Mode.String()
	}
	if s.GuardErr != nil {
		st.BindGuard = &bindGuardJSON{Mode: mode, Note: s.GuardErr.Error()}
	} else {
		st.BindGuard = newBindGuardJSON(mode, s.Guard)
	}
	st.Layers = layersJSON{Rules: st.Installed, BindGuard: st.BindGuard.Active, BindGuardNote: st.BindGuard.Note}
	if st.Sysctls != nil {
		st.Layers.UnprivPortStart = st.Sysctls.UnprivPortStart
	}
	if !st.BindGuard.Active && st.Layers.BindGuardNote == "" {
		st.Layers.BindGuardNote = "no bind guard entry for this network namespace"
	}
	if p != nil && p.Table == name {
		var c compiler.Changes
		if s.Recorded != nil {
			// The table is what the recorded policy compiles to: the
			// change is worked out reservation by reservation, not by
			// comparing 60k elements (160 ms at 10k).
			c, _, _ = compiler.Change(s.Recorded, p.Resolved)
		} else {
			c = compiler.Diff(s.Table, p.Ruleset())
		}
		in := c.InSync()
		st.Policy, st.InSync = p.Path, &in
		if !in {
			st.Changes = &tableChangesJSON{Added: nonNil(c.Added), Removed: nonNil(c.Removed), Changed: nonNil(c.Changed), RulesChanged: c.RulesChanged, Unlabelled: c.Unlabelled}
		}
	}
	switch *format {
	case "json":
		writeJSON(a.stdout, st)
	case "prometheus":
		var sums []compiler.Summary
		if s.Table != nil {
			sums = compiler.Summarize(s.Table)
		}
		bw := bufio.NewWriterSize(a.stdout, 64<<10)
		err := metrics.WriteText(bw, metrics.Text{Version: version, Table: name, Installed: st.Installed, Drops: sums,
			GuardActive: st.Layers.BindGuard, InSync: st.InSync})
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		if err != nil {
			a.printError("status", *path, err)
			return exitUsage
		}
	default:
		a.printStatus(st)
	}
	return exitOK
}

func (a *app) printStatus(st statusJSON) {
	// One write per 64 KiB: a line per reservation was 10k writes at 10k.
	w := bufio.NewWriterSize(a.stdout, 64<<10)
	defer w.Flush()
	if !st.Installed {
		fmt.Fprintf(w, "table inet %s: not installed\n", st.Table)
	} else {
		sync := ""
		if st.InSync != nil {
			if *st.InSync {
				sync = ", in sync with " + st.Policy
			} else {
				sync = ", NOT in sync with " + st.Policy + " (see portfw diff)"
			}
		}
		fmt.Fprintf(w, "table inet %s: installed, %d reservations%s\n", st.Table, len(st.Reservations), sync)
	}
	if s := st.Sysctls; s != nil {
		was := "not changed by portfw"
		if s.UnprivPortStartOriginal != nil {
			was = fmt.Sprintf("lowered by portfw from %d", *s.UnprivPortStartOriginal)
		}
		fmt.Fprintf(w, "%s = %d (%s)\n", tune.UnprivPortStart, s.UnprivPortStart, was)
		if s.ReservedPortsAdded != "" {
			fmt.Fprintf(w, "%s = %q (portfw added %s)\n", tune.ReservedPorts, s.ReservedPorts, s.ReservedPortsAdded)
		}
	}
	if st.StateError != "" {
		fmt.Fprintf(w, "state: %s\n", st.StateError)
	}
	if g := st.Guard; g != nil {
		fmt.Fprintf(w, "guard: %s reserved for root; %d packets, %d bytes dropped\n", strings.Join(g.Ports, ","), g.DroppedPackets, g.DroppedBytes)
	}
	if g := st.BindGuard; g != nil {
		switch {
		case g.Note != "":
			fmt.Fprintf(w, "bind guard: not available: %s\n", g.Note)
		case g.Active:
			fmt.Fprintf(w, "bind guard: %s; owners bind their reserved low ports through it\n", describeBindGuard(g))
		default:
			fmt.Fprintf(w, "bind guard: %s\n", describeBindGuard(g))
		}
		for _, f := range g.Foreign {
			fmt.Fprintf(w, "bind guard: left alone: %s\n", f)
		}
	}
	if u := st.Unlabelled; u != nil {
		owners := append(prefixAll("uid ", u.UIDs), prefixAll("gid ", u.GIDs)...)
		fmt.Fprintf(w, "elements of no reservation (added by hand; apply removes them): ports %s, owners %s, %d packets dropped\n",
			orNone(strings.Join(u.Ports, ",")), orNone(strings.Join(owners, ",")), u.DroppedPackets)
	}
	fmt.Fprintf(w, "layers: %s\n", layersText(st.Layers))
	if len(st.Reservations) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%-16s %-28s %-32s %s\n", "RESERVATION", "PORTS", "OWNERS", "DROPPED")
	for _, r := range st.Reservations {
		owners := append(prefixAll("uid ", r.UIDs), prefixAll("gid ", r.GIDs)...)
		for _, c := range r.Cgroups {
			owners = append(owners, c.String())
		}
		if len(r.Waiting) > 0 {
			owners = append(owners, "waiting for "+strings.Join(r.Waiting, ","))
		}
		fmt.Fprintf(w, "%-16s %-28s %-32s %d packets, %d bytes (in %d, out %d)\n", r.Name, clip(strings.Join(r.Ports, ","), 28),
			clip(strings.Join(owners, ","), 32), r.DroppedPackets, r.DroppedBytes, r.DroppedInPackets, r.DroppedOutPackets)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func prefixAll(p string, xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = p + x
	}
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
