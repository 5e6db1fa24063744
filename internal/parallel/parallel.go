// Package parallel runs independent pieces of one job on a few goroutines.
package parallel

import (
	"errors"
	"sync"
	"sync/atomic"
)

// Each calls f(w, i) for every i in [0, n), on workers goroutines that take
// the next i as they finish one; w is the goroutine's number, 0 to
// workers-1, for what a goroutine owns (a socket, say). Once an f fails no
// further i is started. It returns the errors, joined. With one worker (or
// one i) it runs in the caller's goroutine.
func Each(workers, n int, f func(w, i int) error) error {
	workers = min(workers, n)
	if workers <= 1 {
		for i := range n {
			if err := f(0, i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		wg     sync.WaitGroup
		next   atomic.Int64
		failed atomic.Bool
	)
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(w, i); err != nil {
					errs[w] = err
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Go runs f in a goroutine of its own and returns a function that waits for
// its result: every call, from any goroutine, returns the one result.
func Go[T any](f func() T) func() T {
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	return sync.OnceValue(func() T { return <-ch })
}

// GoErr is Go for a function that returns a value and an error.
func GoErr[T any](f func() (T, error)) func() (T, error) {
	type result struct {
		v   T
		err error
	}
	wait := Go(func() result {
		v, err := f()
		return result{v, err}
	})
	return func() (T, error) {
		r := wait()
		return r.v, r.err
	}
}
