package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/portfw/portfw/audit"
)

type auditJSON struct {
	Version   int             `json:"version"`
	Policy    string          `json:"policy"`
	Sockets   []audit.Finding `json:"sockets"`
	Free      []audit.Free    `json:"free"`
	Squatters int             `json:"squatters"`
}

// runAudit lists the sockets on reserved ports and whether each is an
// owner or a squatter. Exit codes differ from the other commands: 1 means
// "a squatter was found", so a policy that cannot be loaded is 2.
func runAudit(a *app, args []string) int {
	fs := a.flags("audit")
	path := fileFlag(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	// Listing sockets changes nothing: no permission check.
	l, err := a.load(*path, true)
	if err != nil {
		a.printError("audit", *path, err)
		return exitUsage
	}
	e, err := a.host(*o)
	if err != nil {
		a.printError("audit", *path, err)
		return exitUsage
	}
	res := l.resolved
	if p, err := e.Prepare(l.path, l.policy, l.resolved); err == nil {
		res = p.Resolved // with the root-only guard ports
	} else {
		fmt.Fprintf(a.stderr, "warning: %v: the root-only guard ports are not audited\n", err)
	}
	if e.Host.Sockets == nil {
		fmt.Fprintln(a.stderr, "portfw audit: no socket list on this host")
		return exitUsage
	}
	socks, err := e.Host.Sockets()
	if err != nil {
		fmt.Fprintf(a.stderr, "portfw audit: %v\n", err)
		return exitUsage
	}
	rep := audit.Classify(res, socks)
	if missingHolders(rep) && os.Geteuid() != 0 {
		fmt.Fprintln(a.stderr, "warning: not running as root: processes of other users are not shown, and sockets whose owner is a group may show as squatters")
	}
	n := rep.Squatters()
	if *asJSON {
		writeJSON(a.stdout, auditJSON{Version: outputVersion, Policy: l.path, Sockets: rep.Findings, Free: rep.Free, Squatters: n})
	} else {
		a.printAudit(l.path, rep, n)
	}
	if n > 0 {
		return exitNo
	}
	return exitOK
}

func missingHolders(rep audit.Report) bool {
	for _, f := range rep.Findings {
		if len(f.Processes) == 0 {
			return true
		}
	}
	return false
}

func (a *app) printAudit(path string, rep audit.Report, squatters int) {
	switch {
	case squatters > 0:
		noun := "sockets"
		if squatters == 1 {
			noun = "socket"
		}
		fmt.Fprintf(a.stdout, "%d %s on reserved ports held by a SQUATTER (policy %s): their traffic is dropped\n", squatters, noun, path)
	case len(rep.Findings) == 0:
		fmt.Fprintf(a.stdout, "no socket is bound to a reserved port (policy %s)\n", path)
	default:
		fmt.Fprintf(a.stdout, "no squatters: every socket on a reserved port is an owner's (policy %s)\n", path)
	}
	if len(rep.Findings) > 0 {
		fmt.Fprintln(a.stdout)
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "VERDICT\tRESERVATION\tPROTO\tADDRESS\tPORT\tUID\tUSER\tUNIT\tPROCESSES")
		for _, f := range rep.Findings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", verdictText(f.Verdict), f.Reservation, f.Protocol,
				f.Address, f.Port, f.UID, orDash(f.User), unitText(f), processesText(f.Processes))
		}
		tw.Flush()
	}
	if len(rep.Free) > 0 {
		fmt.Fprintf(a.stdout, "\nfree (nobody bound):\n")
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		for _, line := range freeLines(rep.Free) {
			fmt.Fprintf(tw, "  %s\t%s\n", line[0], line[1])
		}
		tw.Flush()
	}
}

func verdictText(v audit.Verdict) string {
	if v == audit.Squatter {
		return "SQUATTER"
	}
	return string(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// unitText is the systemd unit of a finding's socket, or its cgroup path
// when no unit manages it ("/" for the root), "-" when the kernel reported
// no cgroup or it was removed since (--json has its id).
func unitText(f audit.Finding) string {
	if f.Unit != "" {
		return f.Unit
	}
	return orDash(f.CgroupPath)
}

func processesText(ps []audit.Process) string {
	if len(ps) == 0 {
		return "-"
	}
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = strconv.Itoa(p.PID) + " " + p.Command
	}
	return strings.Join(parts, ", ")
}

// freeLines gives one line per reservation: its name and its free ports as
// "80,443/tcp 5060/udp", or "5060/tcp+udp" when both protocols have the
// same free ports. Free is sorted by reservation, then protocol.
func freeLines(free []audit.Free) [][2]string {
	var out [][2]string
	for i := 0; i < len(free); {
		j := i
		var parts []string
		for j < len(free) && free[j].Reservation == free[i].Reservation {
			ports := strings.Join(free[j].Ports, ",")
			protos := free[j].Protocol.String()
			if j+1 < len(free) && free[j+1].Reservation == free[j].Reservation && strings.Join(free[j+1].Ports, ",") == ports {
				protos += "+" + free[j+1].Protocol.String()
				j++
			}
			parts = append(parts, ports+"/"+protos)
			j++
		}
		out = append(out, [2]string{free[i].Reservation, strings.Join(parts, " ")})
		i = j
	}
	return out
}
