package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/tune"
	"github.com/portfw/portfw/resolve"
)

type checkJSON struct {
	Version      int         `json:"version"`
	File         string      `json:"file"`
	DropIns      []string    `json:"drop_ins"`
	Valid        bool        `json:"valid"`
	Table        string      `json:"table,omitempty"`
	Reservations int         `json:"reservations"`
	Elements     int         `json:"elements"`
	Errors       []jsonError `json:"errors"`
	Warnings     []string    `json:"warnings"`
	Notes        []string    `json:"notes"`
	ApplyWould   []string    `json:"apply_would"`
	Layers       *layersJSON `json:"layers,omitempty"`
}

// runCheck validates a policy the way apply would (permissions included)
// and says what applying it would do in this namespace, changing nothing.
func runCheck(a *app, args []string) int {
	fs := a.flags("check")
	path := fileFlag(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	dropIn := fs.String("drop-in", "", "check `FILE` as a drop-in of the policy, in place of policy.d/NAME (see --as), before installing it")
	as := fs.String("as", "", "the `NAME` in policy.d the --drop-in file is to have (default: its own name)")
	insecure := insecureFlag(fs)
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	if *as != "" && *dropIn == "" {
		fmt.Fprintln(a.stderr, "portfw check: --as names where a --drop-in file goes; give --drop-in too")
		return exitUsage
	}
	if *dropIn != "" {
		if *as == "" {
			*as = filepath.Base(*dropIn)
		}
		if strings.ContainsRune(*as, '/') || !strings.HasSuffix(*as, ".yaml") || strings.HasPrefix(*as, ".") {
			fmt.Fprintf(a.stderr, "portfw check: %q is no drop-in's name (a file name ending in .yaml, not starting with a dot); "+
				"give the name it is to have in policy.d with --as NAME\n", *as)
			return exitUsage
		}
	}
	out := checkJSON{Version: outputVersion, File: *path, DropIns: []string{}, Errors: []jsonError{}, Warnings: []string{}, Notes: []string{}, ApplyWould: []string{}}
	fail := func(err error) int {
		if *asJSON {
			out.Errors = jsonErrors(*path, err)
			writeJSON(a.stdout, out)
		} else {
			a.printError("check", *path, err)
		}
		return exitNo
	}
	files, err := a.policyFiles(*path, *insecure)
	if err != nil {
		return fail(err)
	}
	if *dropIn != "" {
		if files, err = withDropIn(files, *dropIn, *as, *insecure); err != nil {
			return fail(err)
		}
	}
	out.DropIns = files[1:]
	l, err := a.loadFiles(files, nil)
	if err != nil {
		return fail(err)
	}
	e, err := a.host(*o)
	if err != nil {
		return fail(err)
	}
	p, err := e.Prepare(l.path, l.policy, l.resolved)
	if err != nil {
		return fail(err)
	}
	out.Valid, out.Table, out.Reservations, out.Elements = true, p.Table, len(l.resolved.Reservations), elementCount(p)
	out.Warnings, out.Notes, out.ApplyWould = nonNil(p.Warnings()), nonNil(append(p.Notes(), tune.Ephemeral(p.Resolved, p.Host)...)), nonNil(planNotes(p))
	layers := planLayers(p)
	out.Layers = &layers
	if *asJSON {
		writeJSON(a.stdout, out)
		return exitOK
	}
	a.printWarnings(out.Warnings)
	fmt.Fprintf(a.stdout, "%s: valid: %d reservations, %d nftables elements, table inet %s\n",
		policyName(*path, out.DropIns), out.Reservations, out.Elements, out.Table)
	for _, n := range out.ApplyWould {
		fmt.Fprintf(a.stdout, "  apply: %s\n", n)
	}
	for _, n := range out.Notes {
		fmt.Fprintf(a.stdout, "  note: %s\n", n)
	}
	fmt.Fprintf(a.stdout, "  layers: %s\n", layersText(layers))
	return exitOK
}

// withDropIn puts file among a policy's files as the drop-in
// policy.d/name, replacing the drop-in of that
// name if there is one: what the policy would be once file is installed
// there. An Ansible template's validate step runs this on its temporary
// file.
func withDropIn(files []string, file, name string, insecure bool) ([]string, error) {
	if !insecure {
		if err := resolve.CheckPerms(file); err != nil {
			return nil, err
		}
	}
	target := filepath.Join(resolve.DropInDir(files[0]), name)
	out := []string{files[0]}
	placed := false
	for _, f := range files[1:] {
		if !placed && filepath.Base(f) >= name {
			out, placed = append(out, file), true
			if f == target {
				continue
			}
		}
		out = append(out, f)
	}
	if !placed {
		out = append(out, file)
	}
	return out, nil
}

// policyName names a policy in one line: its main file and how many
// drop-ins.
func policyName(path string, dropIns []string) string {
	switch len(dropIns) {
	case 0:
		return path
	case 1:
		return path + " + 1 drop-in"
	}
	return fmt.Sprintf("%s + %d drop-ins", path, len(dropIns))
}

// planName names a plan's policy in one line (policyName).
func planName(p *engine.Plan) string {
	if p.Policy == nil {
		return p.Path
	}
	return policyName(p.Path, p.Policy.DropIns)
}

// planNotes says what apply will do to the sysctls.
func planNotes(p *engine.Plan) []string {
	n := p.Sysctls.Changes()
	if g := guardText(p.Sysctls.Guard); g != "" {
		n = append(n, "guard: "+g+" reserved for root (ports the lowered threshold opens that no reservation holds)")
	}
	return n
}

func elementCount(p *engine.Plan) int {
	n := 0
	for _, s := range p.Ruleset().Sets {
		n += len(s.Elements)
	}
	return n
}

// runCompile prints the table apply would install in this namespace.
func runCompile(a *app, args []string) int {
	fs := a.flags("compile")
	path := fileFlag(fs)
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	// Printing a ruleset changes nothing: no permission check.
	l, err := a.load(*path, true)
	if err != nil {
		a.printError("compile", *path, err)
		return exitNo
	}
	e, err := a.host(*o)
	if err != nil {
		a.printError("compile", *path, err)
		return exitUsage
	}
	p, err := e.Prepare(l.path, l.policy, l.resolved)
	if err != nil {
		a.printError("compile", *path, err)
		return exitNo
	}
	fmt.Fprint(a.stdout, p.Ruleset().String())
	return exitOK
}
