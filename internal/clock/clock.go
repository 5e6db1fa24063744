// Package clock lets the daemon's timers be driven by tests: Real is the
// time package, Fake moves only when told to, so debounce and periodic
// checks are tested without sleeping.
package clock

import (
	"sync"
	"time"
)

// Clock makes timers.
type Clock interface {
	Now() time.Time
	// NewTimer returns a stopped timer.
	NewTimer() Timer
	// NewTicker ticks every d.
	NewTicker(d time.Duration) Ticker
}

// Timer fires once on C after Reset.
type Timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// Ticker fires on C every period until Stop.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the system clock.
type Real struct{}

func (Real) Now() time.Time { return time.Now() }

func (Real) NewTimer() Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return realTimer{t}
}

func (Real) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time   { return r.t.C }
func (r realTimer) Reset(d time.Duration) { r.t.Reset(d) }
func (r realTimer) Stop()                 { r.t.Stop() }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Fake is a clock that moves only on Advance.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

// NewFake returns a fake clock at a fixed instant.
func NewFake() *Fake { return &Fake{now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)} }

func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *Fake) NewTimer() Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	f.timers = append(f.timers, t)
	return t
}

func (f *Fake) NewTicker(d time.Duration) Ticker {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{f: f, c: make(chan time.Time, 1), period: d, when: f.now.Add(d), armed: true}
	f.timers = append(f.timers, t)
	return t
}

// Advance moves the clock and fires every timer whose time came, in order
// of their deadlines. A channel holds one pending tick; further ticks of a
// ticker nobody read are dropped, as with time.Ticker. It returns how many
// ticks it delivered: how many wake-ups the reader has coming.
func (f *Fake) Advance(d time.Duration) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	end := f.now.Add(d)
	delivered := 0
	for {
		var next *fakeTimer
		for _, t := range f.timers {
			if t.armed && !t.when.After(end) && (next == nil || t.when.Before(next.when)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		f.now = next.when
		select {
		case next.c <- f.now:
			delivered++
		default:
		}
		if next.period > 0 {
			next.when = next.when.Add(next.period)
		} else {
			next.armed = false
		}
	}
	f.now = end
	return delivered
}

// Armed counts the timers and tickers waiting to fire.
func (f *Fake) Armed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, t := range f.timers {
		if t.armed {
			n++
		}
	}
	return n
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	when   time.Time
	period time.Duration
	armed  bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Reset(d time.Duration) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.when, t.armed = t.f.now.Add(d), true
	select { // a tick not yet read belongs to the old deadline
	case <-t.c:
	default:
	}
}

func (t *fakeTimer) Stop() {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.armed = false
}
