package engine

import "context"

// LeaseAheadAndRelease takes a lease as a lane does ahead of its next
// batch, then gives it back as a lane that stops does.
func LeaseAheadAndRelease(ctx context.Context, w *Worker) {
	p := &pipeline{}
	p.prefetch(ctx, w)
	p.release(w)
}

// PushLeasedAhead takes a lease as a lane does ahead of its next batch,
// calls meanwhile (the lane's previous push), then pushes what it leased;
// it returns how many items it finished.
func PushLeasedAhead(ctx context.Context, w *Worker, meanwhile func()) int {
	p := &pipeline{}
	p.prefetch(ctx, w)
	l := p.next(ctx, w)
	meanwhile()
	n := 0
	for _, b := range l.batches {
		k, _ := w.push(ctx, b, l.owner, l.at, nil)
		n += k
	}
	return n
}
