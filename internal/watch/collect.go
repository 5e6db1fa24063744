package watch

import "runtime/metrics"

// Collecting garbage between reloads.
//
// A reload allocates the new policy's arrays: 6-10 MB at 10k
// reservations, against a live heap of about 40 MB. Left to its pacer, the
// collector starts every few reloads, in the middle of one, and shares the
// two CPUs with it (its mark workers and assists): at 10k reservations the
// load phase then took 20-24 ms instead of 7-8 at the 90th percentile, and
// the whole reload's 99th percentile, write to commit, was 46-47 ms
// (docs/performance.md). Collected in the background once a reload is
// through, while the daemon waits for the next edit, it found room for its
// allocations and its 99th percentile was 33-40 ms.
//
// Only when due, though: the collection costs CPU in proportion to the live
// heap (about 11 ms at 10k), and a burst of reloads (units restarting) needs
// no more of them than the pacer would run.

// Heap is what the runtime says of its heap, in bytes.
type Heap struct {
	Allocated uint64 // allocated since the process started
	Objects   uint64 // occupied by objects, live or not yet swept
	Live      uint64 // marked live by the last collection
	Goal      uint64 // the size at which the current cycle should end
}

var heapMetrics = []string{"/gc/heap/allocs:bytes", "/memory/classes/heap/objects:bytes", "/gc/heap/live:bytes", "/gc/heap/goal:bytes"}

func readHeap() Heap {
	s := make([]metrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		s[i].Name = name
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return Heap{Allocated: v(0), Objects: v(1), Live: v(2), Goal: v(3)}
}

// due tells whether the collector would start before two more reloads
// allocating perReload each are through: the pacer starts a cycle at 70%
// of the way from the live heap to the goal at the earliest.
func (h Heap) due(perReload uint64) bool {
	if h.Goal <= h.Live {
		return false // no figures
	}
	trigger := h.Live + (h.Goal-h.Live)*7/10
	return h.Objects+2*perReload >= trigger
}

// collectAfter runs Collect in the background, unless one still runs, when
// the reload that began with the heap at before makes it due.
func (d *Daemon) collectAfter(before Heap) {
	after := d.cfg.Heap()
	if after.Allocated < before.Allocated || !after.due(after.Allocated-before.Allocated) {
		return
	}
	if d.collecting.CompareAndSwap(false, true) {
		go func() {
			defer d.collecting.Store(false)
			d.cfg.Collect()
		}()
	}
}
