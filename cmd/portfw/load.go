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
// what changed since its last version), or in full when l is nil. The
// policy is its main file and the drop-ins of policy.d beside it.
func (a *app) loadWith(path string, insecure bool, l *resolve.Loader) (*loaded, error) {
	files, err := a.policyFiles(path, insecure)
	if err != nil {
		return nil, err
	}
	return a.loadFiles(files, l)
}

// loadFiles loads the policy of files (the main one first; see loadWith).
func (a *app) loadFiles(files []string, l *resolve.Loader) (*loaded, error) {
	var res *model.Resolved
	var pol *policy.Policy
	var err error
	if l != nil {
		res, pol, err = l.Load(files)
	} else {
		res, pol, err = resolve.LoadFiles(files, a.resolver())
	}
	if err != nil {
		return nil, err
	}
	return &loaded{path: files[0], policy: pol, resolved: res}, nil
}

// policyFiles lists the policy's files (resolve.Files) and, unless
// insecure, checks that root alone can change each of them.
func (a *app) policyFiles(path string, insecure bool) ([]string, error) {
	files, err := resolve.Files(path)
	if err != nil {
		return nil, err
	}
	if !insecure {
		if err := resolve.CheckFilePerms(files); err != nil {
			return nil, fmt.Errorf("%w\n(a policy anyone but root can change decides who owns which port; --insecure-policy-perms overrides this check)", err)
		}
	}
	return files, nil
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
