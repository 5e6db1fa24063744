package policy

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/portfw/portfw/model"
)

// Error is one problem in a policy: where it is, which field, and what is
// wrong.
type Error struct {
	Pos   model.Pos
	Field string // e.g. "reservations[2].ports[1]"; empty for the file as a whole
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Pos, e.Field, e.Msg)
}

// MaxErrors is how many problems Errors keeps; the rest are only counted.
// A 50 MB policy of nothing but mistakes once produced two million lines.
const MaxErrors = 100

// Errors is every problem found in a policy, in file order, at most
// MaxErrors of them; Dropped counts those left out.
type Errors struct {
	List    []*Error
	Dropped int
}

func (es *Errors) add(e *Error) {
	if len(es.List) >= MaxErrors {
		es.Dropped++
		return
	}
	es.List = append(es.List, e)
}

// Add records a problem (for package resolve, which finds problems that
// need ids).
func (es *Errors) Add(pos model.Pos, field, msg string) {
	es.add(&Error{Pos: pos, Field: field, Msg: msg})
}

// Append adds the problems of err when it is an *Errors, and reports
// whether it was.
func (es *Errors) Append(err error) bool {
	var o *Errors
	if !errors.As(err, &o) {
		return false
	}
	for _, e := range o.List {
		es.add(e)
	}
	es.Dropped += o.Dropped
	return true
}

// Len is the number of problems found, kept or not.
func (es *Errors) Len() int { return len(es.List) + es.Dropped }

func (es *Errors) Error() string {
	var b strings.Builder
	for i, e := range es.List {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	if es.Dropped > 0 {
		fmt.Fprintf(&b, "\n... and %d more problems", es.Dropped)
	}
	return b.String()
}

// Err sorts the problems into file order (files in the order their first
// problem was found: the main policy before its drop-ins) and returns them,
// or nil when there are none, so that callers never get a non-nil error
// holding no problems.
func (es *Errors) Err() error {
	if es.Len() == 0 {
		return nil
	}
	files := map[string]int{}
	for _, e := range es.List {
		if _, ok := files[e.Pos.File]; !ok {
			files[e.Pos.File] = len(files)
		}
	}
	slices.SortStableFunc(es.List, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(files[a.Pos.File], files[b.Pos.File]), cmp.Compare(a.Pos.Line, b.Pos.Line), cmp.Compare(a.Pos.Col, b.Pos.Col))
	})
	return es
}
