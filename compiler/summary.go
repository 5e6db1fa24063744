package compiler

import (
	"fmt"
	"slices"
	"sort"
)

// Summary describes one reservation as a ruleset holds it: enough for
// `portfw status` to explain the kernel's table without the policy file.
type Summary struct {
	Name           string   `json:"name"`
	Ports          []string `json:"ports"`          // "tcp/80", "udp/5060-5069", "tcp/80@192.0.2.10"
	UIDs           []string `json:"uids,omitempty"` // "33", "1200-1299"
	GIDs           []string `json:"gids,omitempty"`
	DroppedPackets uint64   `json:"dropped_packets"`
	DroppedBytes   uint64   `json:"dropped_bytes"`
}

// Summarize lists the reservations in rs, sorted by name. Counters come
// from the drop sets, so they are non-zero only for a ruleset read back
// from the kernel.
func Summarize(rs *Ruleset) []Summary {
	by := map[string]*Summary{}
	get := func(name string) *Summary {
		if by[name] == nil {
			by[name] = &Summary{Name: name}
		}
		return by[name]
	}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			sum := get(e.Comment)
			switch {
			case s.Counter:
				sum.DroppedPackets += e.Packets
				sum.DroppedBytes += e.Bytes
			case s.Has(FieldUID):
				sum.UIDs = appendUniq(sum.UIDs, e.ID.String())
			case s.Has(FieldGID):
				sum.GIDs = appendUniq(sum.GIDs, e.ID.String())
			default:
				p := fmt.Sprintf("%s/%s", e.Proto, e.Ports)
				if e.Addr.IsValid() {
					a := e.Addr.String()
					if e.Addr.IsSingleIP() {
						a = e.Addr.Addr().String()
					}
					p += "@" + a
				}
				sum.Ports = appendUniq(sum.Ports, p)
			}
		}
	}
	out := make([]Summary, 0, len(by))
	for _, s := range by {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func appendUniq(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}
