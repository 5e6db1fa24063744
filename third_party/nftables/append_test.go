package nftables

import (
	"reflect"
	"testing"
)

// TestAppend: commands queued on a Conn that never dials move, in order,
// to the end of another's buffer, with the first error; the first Conn
// is left empty.
func TestAppend(t *testing.T) {
	from, _ := New()
	direct, _ := New()
	to, _ := New()
	for _, c := range []*Conn{from, direct} {
		tbl := c.AddTable(&Table{Name: "t", Family: TableFamilyINet})
		c.AddChain(&Chain{Name: "c", Table: tbl})
		c.DelTable(tbl)
	}
	to.AddTable(&Table{Name: "before", Family: TableFamilyINet})
	before := len(to.messages)
	to.Append(from)
	if len(from.messages) != 0 || from.err != nil {
		t.Fatalf("from keeps %d messages, error %v", len(from.messages), from.err)
	}
	if got := to.messages[before:]; !reflect.DeepEqual(got, direct.messages) {
		t.Fatalf("appended %d messages, unlike the %d queued directly", len(got), len(direct.messages))
	}
	from.err = errTest
	to.Append(from)
	if to.err != errTest {
		t.Fatalf("the error was not moved: %v", to.err)
	}
}

var errTest = errorString("test")

type errorString string

func (e errorString) Error() string { return string(e) }
