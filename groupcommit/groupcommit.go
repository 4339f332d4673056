// Package groupcommit runs the work of concurrent callers together: while
// one batch is being written, the items that arrive queue up, and the next
// write takes all of them (group commit). A caller waits for its own items
// only. Nothing runs while no caller is waiting: a caller that finds no
// write in progress starts a flusher, which ends when the queue is empty.
//
// kapfhir uses it wherever many goroutines each want a small transaction
// on a store with one writer: the audit records of concurrent reads, the
// results of concurrent sync lanes.
package groupcommit

import (
	"context"
	"sync"
)

// Flush writes items together and returns one error per item (nil: that
// item is written), or one error for all of them.
type Flush[T any] func(ctx context.Context, items []T) (errs []error, err error)

// Batcher groups the items of concurrent Do calls into Flush calls of at
// most Max items.
type Batcher[T any] struct {
	flush Flush[T]
	max   int

	mu       sync.Mutex
	queue    []pending[T]
	flushing bool
}

type pending[T any] struct {
	item T
	done chan error
}

// New returns a Batcher that writes with flush, at most max items at once.
func New[T any](max int, flush Flush[T]) *Batcher[T] {
	return &Batcher[T]{flush: flush, max: max}
}

// Do queues items and waits until each is written; it returns one error
// per item. The flush runs with ctx's values but not its cancellation (a
// batch holds other callers' items too).
func (b *Batcher[T]) Do(ctx context.Context, items ...T) []error {
	waits := make([]chan error, len(items))
	b.mu.Lock()
	for i, it := range items {
		waits[i] = make(chan error, 1)
		b.queue = append(b.queue, pending[T]{item: it, done: waits[i]})
	}
	start := !b.flushing
	b.flushing = true
	b.mu.Unlock()
	if start {
		go b.run(context.WithoutCancel(ctx))
	}
	errs := make([]error, len(items))
	for i, w := range waits {
		errs[i] = <-w
	}
	return errs
}

// run flushes the queue, batch by batch, until it is empty.
func (b *Batcher[T]) run(ctx context.Context) {
	for {
		b.mu.Lock()
		n := min(len(b.queue), b.max)
		if n == 0 {
			b.flushing = false
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		items := make([]T, n)
		for i, p := range batch {
			items[i] = p.item
		}
		errs, err := b.flush(ctx, items)
		for i, p := range batch {
			switch {
			case err != nil:
				p.done <- err
			case i < len(errs):
				p.done <- errs[i]
			default:
				p.done <- nil
			}
		}
	}
}
