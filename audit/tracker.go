package audit

import (
	"net/netip"

	"github.com/portfw/portfw/model"
)

// Tracker turns a series of reports into "new squatter" events, so a daemon
// that audits periodically logs each squatter once instead of on every
// scan. It remembers only the previous report: a squatter that goes away
// and comes back is new again. A squatter is the same while its socket is
// (same inode), so one that restarts between two scans is new too. The
// zero Tracker is ready to use; it is not safe for concurrent use.
type Tracker struct {
	last map[squatterKey]bool
}

type squatterKey struct {
	reservation string
	protocol    model.Protocol
	addr        netip.Addr
	port        uint16
	uid         uint32
	inode       uint64
}

// New returns the squatters of r that were not in the previous report, in
// r's order, and makes r the previous report.
func (t *Tracker) New(r Report) []Finding {
	cur := map[squatterKey]bool{}
	var out []Finding
	for _, f := range r.Findings {
		if f.Verdict != Squatter {
			continue
		}
		k := squatterKey{f.Reservation, f.Protocol, f.Address, f.Port, f.UID, f.Inode}
		if !t.last[k] && !cur[k] {
			out = append(out, f)
		}
		cur[k] = true
	}
	t.last = cur
	return out
}
