package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// loaded is a policy read and resolved.
type loaded struct {
	path     string
	policy   *policy.Policy
	resolved *model.Resolved
}

// load checks the policy's permissions (unless insecure), then reads,
// parses and resolves it. On failure it returns the error for the caller to
// print: nothing touched the kernel.
func (a *app) load(path string, insecure bool) (*loaded, error) {
	return a.loadWith(path, insecure, nil)
}

// loadWith is load through l (the daemon's, which parses and resolves only
// what changed since its last version), or in full when l is nil.
func (a *app) loadWith(path string, insecure bool, l *resolve.Loader) (*loaded, error) {
	if !insecure {
		if err := resolve.CheckPerms(path); err != nil {
			return nil, fmt.Errorf("%w\n(a policy anyone but root can change decides who owns which port; --insecure-policy-perms overrides this check)", err)
		}
	}
	var res *model.Resolved
	var pol *policy.Policy
	var err error
	if l != nil {
		res, pol, err = l.Load()
	} else {
		res, pol, err = resolve.Load(path, a.resolver())
	}
	if err != nil {
		return nil, err
	}
	return &loaded{path: path, policy: pol, resolved: res}, nil
}

// printError prints a policy's problems, one per line, and a summary; any
// other error as one line.
func (a *app) printError(cmd, path string, err error) {
	var es *policy.Errors
	if errors.As(err, &es) {
		for _, e := range es.List {
			fmt.Fprintln(a.stderr, e)
		}
		if es.Dropped > 0 {
			fmt.Fprintf(a.stderr, "... and %d more problems not shown\n", es.Dropped)
		}
		noun := "problems"
		if es.Len() == 1 {
			noun = "problem"
		}
		fmt.Fprintf(a.stderr, "portfw: %s: %d %s; the kernel was not touched\n", path, es.Len(), noun)
		return
	}
	fmt.Fprintf(a.stderr, "portfw %s: %v\n", cmd, err)
}

// jsonErrors turns an error into the errors list of --json output.
func jsonErrors(path string, err error) []jsonError {
	var es *policy.Errors
	if !errors.As(err, &es) {
		return []jsonError{{File: path, Message: err.Error()}}
	}
	out := make([]jsonError, 0, len(es.List)+1)
	for _, e := range es.List {
		out = append(out, jsonError{e.Pos.File, e.Pos.Line, e.Pos.Col, e.Field, e.Msg})
	}
	if es.Dropped > 0 {
		out = append(out, jsonError{File: path, Message: fmt.Sprintf("%d more problems not shown", es.Dropped)})
	}
	return out
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

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
