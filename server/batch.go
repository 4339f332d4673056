package server

import (
	"context"
	"sync"

	"github.com/kapfhir/kapfhir/audit"
)

// batcher appends the audit records of concurrent requests together (group
// commit): records queue while an append runs, and the next append takes
// all of them in one transaction. A request that finds no append running
// starts a flusher, which ends when the queue is empty (nothing runs while
// the server is idle). Each request returns once its own record is durable.
type batcher struct {
	rec Recorder

	mu       sync.Mutex
	queue    []pending
	flushing bool
}

type pending struct {
	r    audit.Record
	done chan error
}

// maxBatch bounds the records appended in one transaction.
const maxBatch = 256

// AppendAudit implements Recorder.
func (b *batcher) AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error) {
	waits := make([]chan error, len(recs))
	b.mu.Lock()
	for i, r := range recs {
		waits[i] = make(chan error, 1)
		b.queue = append(b.queue, pending{r: r, done: waits[i]})
	}
	start := !b.flushing
	b.flushing = true
	b.mu.Unlock()
	if start {
		go b.flush(context.WithoutCancel(ctx))
	}
	for _, w := range waits {
		if err := <-w; err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// flush appends the queue, batch by batch, until it is empty.
func (b *batcher) flush(ctx context.Context) {
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxBatch)
		if n == 0 {
			b.flushing = false
			b.mu.Unlock()
			return
		}
		batch := b.queue[:n:n]
		b.queue = b.queue[n:]
		b.mu.Unlock()
		recs := make([]audit.Record, n)
		for i, p := range batch {
			recs[i] = p.r
		}
		_, err := b.rec.AppendAudit(ctx, recs...)
		for _, p := range batch {
			p.done <- err
		}
	}
}
