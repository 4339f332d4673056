package audit

import (
	"context"
	"log/slog"
	"time"
)

// Pruner is where records older than a retention period go: a store that
// deletes them and records the prune in the chain.
type Pruner interface {
	PruneAudit(ctx context.Context, before time.Time, by Record) (int, error)
}

// Retention keeps the trail to a retention period: Prune deletes the
// records older than Period (the store records the prune, so the chain
// verifies from where it then starts); Run does it on a schedule.
type Retention struct {
	Store  Pruner
	Period time.Duration // > 0
	Source string        // the installation (the prune record's observer)
	Now    func() time.Time
	Log    *slog.Logger
}

// Prune deletes the records older than Period, by agent.
func (r Retention) Prune(ctx context.Context, agent Agent) (before time.Time, n int, err error) {
	now := r.Now().UTC()
	before = now.Add(-r.Period)
	n, err = r.Store.PruneAudit(ctx, before, Record{Time: now, Agent: agent, Source: r.Source})
	return before, n, err
}

// PruneLogged prunes as kapfhir itself and logs the outcome (ids and
// counts only).
func (r Retention) PruneLogged(ctx context.Context) {
	before, n, err := r.Prune(ctx, System)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		r.Log.Error("audit retention: prune failed", "error", err)
	default:
		r.Log.Info("audit retention: pruned", "records", n, "before", before.Format(time.RFC3339))
	}
}

// Run prunes as kapfhir itself now and then every interval until ctx is
// done. A failed prune is logged and tried again at the next interval.
func (r Retention) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		r.PruneLogged(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
