package audit_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/store/sqlite"
)

// TestRetentionPrune prunes a real store: the records older than the
// period go, the prune is recorded by the agent, and the chain verifies.
func TestRetentionPrune(t *testing.T) {
	ctx := t.Context()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	start := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for i := range 10 { // one record a day
		if _, err := db.AppendAudit(ctx, audit.Record{Time: start.Add(time.Duration(i) * day), Subtype: audit.Read, Source: source,
			Agent: audit.Agent{ClientID: "app-1"}, Entities: []audit.Entity{{Ref: "CarePlan/cp-1"}}}); err != nil {
			t.Fatal(err)
		}
	}
	now := start.Add(9*day + time.Hour)
	r := audit.Retention{Store: db, Period: 3 * day, Source: source, Now: func() time.Time { return now }}
	before, n, err := r.Prune(ctx, audit.Agent{ClientID: "cli", Role: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if want := now.Add(-3 * day); !before.Equal(want) || n != 7 {
		t.Errorf("Prune = before %s, %d records; want before %s, 7 (days 0-6)", before, n, want)
	}
	rep, err := db.VerifyAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Intact || rep.Records != 4 || rep.From != 8 || rep.To != 11 {
		t.Errorf("after the prune: %+v; want intact, records 8-11 (11 the prune)", rep)
	}
	p, err := db.AuditEvents(ctx, audit.Filter{Subtypes: []audit.Subtype{audit.Prune}})
	if err != nil || len(p.Records) != 1 || p.Records[0].Agent.ClientID != "cli" || p.Records[0].Detail[audit.DetailPruned] != "7" {
		t.Errorf("prune records = %d (%v); want one, by cli, 7 pruned", len(p.Records), err)
	}
}

// prunes is a store that counts prunes and fails the ones it is told to.
type prunes struct {
	mu     sync.Mutex
	before []time.Time
	fail   bool
}

func (p *prunes) PruneAudit(_ context.Context, before time.Time, by audit.Record) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail {
		p.fail = false
		return 0, io.ErrUnexpectedEOF
	}
	if by.Agent != audit.System {
		return 0, io.ErrClosedPipe
	}
	p.before = append(p.before, before)
	return 1, nil
}

// TestRetentionRun prunes at start and then every interval, carries on
// after a failure, and stops with its context.
func TestRetentionRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := &prunes{fail: true}
		ctx, cancel := context.WithCancel(t.Context())
		r := audit.Retention{Store: st, Period: 48 * time.Hour, Source: source, Now: time.Now, Log: slog.New(slog.DiscardHandler)}
		done := make(chan struct{})
		go func() { r.Run(ctx, time.Hour); close(done) }()
		t0 := time.Now()
		synctest.Wait() // the first prune failed
		time.Sleep(3*time.Hour + time.Minute)
		synctest.Wait()
		cancel()
		<-done
		st.mu.Lock()
		defer st.mu.Unlock()
		if len(st.before) != 3 {
			t.Fatalf("%d prunes after a failed one and 3 hours, want 3", len(st.before))
		}
		for i, b := range st.before {
			if want := t0.Add(time.Duration(i+1)*time.Hour - 48*time.Hour).UTC(); !b.Equal(want) {
				t.Errorf("prune %d before %s, want %s", i, b, want)
			}
		}
	})
}
