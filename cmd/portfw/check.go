package main

import (
	"fmt"

	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/internal/tune"
)

type checkJSON struct {
	Version      int         `json:"version"`
	File         string      `json:"file"`
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
	insecure := insecureFlag(fs)
	o := a.hostFlags(fs, 0)
	if code, done := a.parse(fs, args); done {
		return code
	}
	out := checkJSON{Version: outputVersion, File: *path, Errors: []jsonError{}, Warnings: []string{}, Notes: []string{}, ApplyWould: []string{}}
	fail := func(err error) int {
		if *asJSON {
			out.Errors = jsonErrors(*path, err)
			writeJSON(a.stdout, out)
		} else {
			a.printError("check", *path, err)
		}
		return exitNo
	}
	l, err := a.load(*path, *insecure)
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
		*path, out.Reservations, out.Elements, out.Table)
	for _, n := range out.ApplyWould {
		fmt.Fprintf(a.stdout, "  apply: %s\n", n)
	}
	for _, n := range out.Notes {
		fmt.Fprintf(a.stdout, "  note: %s\n", n)
	}
	fmt.Fprintf(a.stdout, "  layers: %s\n", layersText(layers))
	return exitOK
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
