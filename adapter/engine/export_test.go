package engine

import "context"

// LeaseAheadAndRelease takes a lease as a lane does ahead of its next
// batch, then gives it back as a lane that stops does.
func LeaseAheadAndRelease(ctx context.Context, w *Worker) {
	p := &pipeline{}
	p.prefetch(ctx, w)
	p.release(w)
}
