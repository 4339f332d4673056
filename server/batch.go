package server

import (
	"context"

	"github.com/kapfhir/kapfhir/audit"
)

// batcher appends the audit records of concurrent requests together: one
// transaction for all the records waiting when the previous one commits
// (group commit). Each request still waits until its record is durable.
type batcher struct {
	rec  Recorder
	reqs chan batchReq
}

type batchReq struct {
	ctx  context.Context
	r    audit.Record
	done chan error
}

// maxBatch bounds the records appended in one transaction.
const maxBatch = 256

// newBatcher starts appending through rec until ctx ends.
func newBatcher(ctx context.Context, rec Recorder) *batcher {
	b := &batcher{rec: rec, reqs: make(chan batchReq, maxBatch)}
	go b.loop(ctx)
	return b
}

func (b *batcher) loop(ctx context.Context) {
	for {
		var first batchReq
		select {
		case <-ctx.Done():
			return
		case first = <-b.reqs:
		}
		batch := []batchReq{first}
	more:
		for len(batch) < maxBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		recs := make([]audit.Record, len(batch))
		for i, r := range batch {
			recs[i] = r.r
		}
		_, err := b.rec.AppendAudit(context.WithoutCancel(first.ctx), recs...)
		for _, r := range batch {
			r.done <- err
		}
	}
}

// AppendAudit implements Recorder: it returns once the record is appended.
func (b *batcher) AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error) {
	for _, r := range recs {
		done := make(chan error, 1)
		select {
		case b.reqs <- batchReq{ctx: ctx, r: r, done: done}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		select {
		case err := <-done:
			if err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return recs, nil
}
