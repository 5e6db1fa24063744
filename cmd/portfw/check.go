package main

import (
	"errors"
	"fmt"

	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/policy"
)

type jsonError struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Col     int    `json:"col"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func runCheck(a *app, args []string) int {
	fs := a.flags("check")
	path := fileFlag(fs)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if code, done := a.parse(fs, args); done {
		return code
	}
	l, code := a.loadQuiet(*path, *asJSON)
	if l == nil {
		return code
	}
	ws := warnings(l.Resolved)
	if *asJSON {
		writeJSON(a.stdout, map[string]any{
			"file": *path, "valid": true, "table": l.Resolved.Settings.Table,
			"reservations": len(l.Resolved.Reservations), "errors": []jsonError{}, "warnings": nonNil(ws),
			"apply_would": nonNil(planNotes(l)),
		})
		return exitOK
	}
	a.printWarnings(ws)
	fmt.Fprintf(a.stdout, "%s: valid: %d reservations, %d nftables elements, table inet %s\n",
		*path, len(l.Resolved.Reservations), elementCount(l), l.Resolved.Settings.Table)
	for _, n := range planNotes(l) {
		fmt.Fprintf(a.stdout, "  apply: %s\n", n)
	}
	return exitOK
}

// loadQuiet is load, but with --json the errors go to stdout as data.
func (a *app) loadQuiet(path string, asJSON bool) (*engine.Prepared, int) {
	if !asJSON {
		return a.load(path)
	}
	res, pol, err := policy.Load(path, policy.System{})
	if err == nil {
		return engine.Prepare(path, pol, res), exitOK
	}
	errs := []jsonError{}
	var es policy.Errors
	if errors.As(err, &es) {
		for _, e := range es {
			errs = append(errs, jsonError{e.Pos.File, e.Pos.Line, e.Pos.Col, e.Field, e.Msg})
		}
	} else {
		errs = append(errs, jsonError{File: path, Message: err.Error()})
	}
	writeJSON(a.stdout, map[string]any{"file": path, "valid": false, "errors": errs, "warnings": []string{}})
	return nil, exitNo
}

func elementCount(l *engine.Prepared) int {
	n := 0
	for _, s := range l.Ruleset.Sets {
		n += len(s.Elements)
	}
	return n
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func runCompile(a *app, args []string) int {
	fs := a.flags("compile")
	path := fileFlag(fs)
	if code, done := a.parse(fs, args); done {
		return code
	}
	l, code := a.load(*path)
	if l == nil {
		return code
	}
	fmt.Fprint(a.stdout, l.Ruleset.String())
	return exitOK
}
