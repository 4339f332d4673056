package server

import (
	"context"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/groupcommit"
)

// batcher appends the audit records of concurrent requests together (group
// commit): each request returns once its own record is durable.
type batcher struct {
	b *groupcommit.Batcher[audit.Record]
}

// maxBatch bounds the records appended in one transaction.
const maxBatch = 256

func newBatcher(rec Recorder) batcher {
	return batcher{groupcommit.New(maxBatch, func(ctx context.Context, recs []audit.Record) ([]error, error) {
		_, err := rec.AppendAudit(ctx, recs...)
		return nil, err
	})}
}

// AppendAudit implements Recorder.
func (b batcher) AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error) {
	for _, err := range b.b.Do(ctx, recs...) {
		if err != nil {
			return nil, err
		}
	}
	return recs, nil
}
