package parallel

import (
	"errors"
	"sync/atomic"
	"testing"
)

// TestEach: every index once, each worker number in range; after a
// failure the error comes back and no index is started twice.
func TestEach(t *testing.T) {
	for _, workers := range []int{1, 2, 4} {
		var seen [100]atomic.Int32
		err := Each(workers, len(seen), func(w, i int) error {
			if w < 0 || w >= workers {
				t.Errorf("worker %d of %d", w, workers)
			}
			seen[i].Add(1)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := range seen {
			if n := seen[i].Load(); n != 1 {
				t.Fatalf("%d workers: index %d ran %d times", workers, i, n)
			}
		}
		boom := errors.New("boom")
		var ran atomic.Int32
		err = Each(workers, 100, func(w, i int) error {
			ran.Add(1)
			if i == 10 {
				return boom
			}
			return nil
		})
		if !errors.Is(err, boom) || workers == 1 && ran.Load() != 11 {
			t.Fatalf("%d workers: %v after %d calls", workers, err, ran.Load())
		}
	}
}

// TestGo: f runs once, beside the caller, and every wait returns its one
// result.
func TestGo(t *testing.T) {
	var runs atomic.Int32
	release := make(chan struct{})
	wait := Go(func() int { <-release; return int(runs.Add(1)) })
	close(release) // f was not waited for to start: it runs beside us
	for range 3 {
		if got := wait(); got != 1 {
			t.Fatalf("wait = %d, want 1", got)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("f ran %d times", runs.Load())
	}
	failed := errors.New("failed")
	waitErr := GoErr(func() (int, error) { return 7, failed })
	for range 2 {
		if v, err := waitErr(); v != 7 || err != failed {
			t.Fatalf("GoErr's wait = %d, %v; want 7, %v", v, err, failed)
		}
	}
}
