package resolve

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
)

// SubIDs is a resolver that also knows the subordinate ids users may map
// into user namespaces of their own (/etc/subuid, /etc/subgid).
type SubIDs interface {
	SubUIDs() ([]SubRange, error)
	SubGIDs() ([]SubRange, error)
}

// SubRange is one line of /etc/subuid or /etc/subgid: User may run
// processes as the ids Range, inside a user namespace.
type SubRange struct {
	User  string
	Range model.IDRange
}

// SubIDWarnings names the owner id ranges that a user's subordinate ids
// overlap: that user can create a user namespace mapping them and is then
// an owner, to the guard and the table alike.
func SubIDWarnings(r *model.Resolved, s SubIDs) []string {
	var out []string
	check := func(kind, file string, subs []SubRange, ids func(model.Owners) []model.IDRange) {
		for _, res := range r.Reservations {
			for _, own := range ids(res.Owners) {
				for _, sub := range subs {
					if own.Lo <= sub.Range.Hi && sub.Range.Lo <= own.Hi {
						out = append(out, fmt.Sprintf("reservation %q at %s: owner %ss %s overlap the subordinate %ss %s of user %s (%s): "+
							"that user can run processes as them in a user namespace of its own, and is then an owner; keep owner ranges out of %s",
							res.Name, res.Pos, kind, own, kind, sub.Range, sub.User, file, file))
					}
				}
			}
		}
	}
	if subs, err := s.SubUIDs(); err == nil {
		check("uid", "/etc/subuid", subs, func(o model.Owners) []model.IDRange { return o.UIDs })
	}
	if subs, err := s.SubGIDs(); err == nil {
		check("gid", "/etc/subgid", subs, func(o model.Owners) []model.IDRange { return o.GIDs })
	}
	return out
}

// parseSubIDs reads "name:start:count" lines; others are skipped.
func parseSubIDs(data []byte) []SubRange {
	var out []SubRange
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) != 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 || start+count-1 > 1<<32-1 {
			continue
		}
		out = append(out, SubRange{User: f[0], Range: model.IDRange{Lo: uint32(start), Hi: uint32(start + count - 1)}})
	}
	return out
}

func readSubIDs(path string) ([]SubRange, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseSubIDs(data), nil
}
