package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/adapter"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/config"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/store"
)

// openSync opens the store, the application service and a sync manager
// over them (not started); the service wakes the manager after each change.
func openSync(ctx context.Context, cfg config.Config, log *slog.Logger) (*app.Service, store.Store, *adapter.Manager, error) {
	var mgr *adapter.Manager
	svc, st, err := newService(ctx, cfg, log, func() {
		if mgr != nil {
			mgr.Notify()
		}
	})
	if err != nil {
		return nil, nil, nil, err
	}
	mgr = newManager(cfg, svc, st, log)
	return svc, st, mgr, nil
}

// openManager is openSync for the commands that need only the manager.
func openManager(ctx context.Context, cfg config.Config, log *slog.Logger) (*adapter.Manager, func(), error) {
	_, st, mgr, err := openSync(ctx, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	return mgr, func() { st.Close() }, nil
}

// endpointsCmd runs `kapfhir endpoints list` and `kapfhir endpoints test ID`.
func endpointsCmd(ctx context.Context, cfg config.Config, log *slog.Logger, args []string, w io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "test") || (args[0] == "test" && len(args) != 2) || (args[0] == "list" && len(args) != 1) {
		return errors.New(`usage: kapfhir endpoints list | kapfhir endpoints test ID`)
	}
	mgr, closeFn, err := openManager(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeFn()
	if err := mgr.Start(ctx); err != nil { // stores the configured endpoints
		return err
	}
	mgr.Stop()
	if args[0] == "list" {
		eps, err := mgr.Endpoints(ctx)
		if err != nil {
			return err
		}
		tw := newTable(w, "ID", "NAME", "SOURCE", "ENABLED", "AUTH", "FHIR BASE URL")
		for _, e := range eps {
			tw.row(e.ID, e.Name, string(e.Source), fmt.Sprint(e.Enabled), string(e.AuthState), e.FHIRBaseURL)
		}
		return tw.flush()
	}
	r, err := mgr.Test(ctx, args[1])
	if err != nil {
		return err
	}
	printReport(w, r)
	if !r.OK {
		return fmt.Errorf("endpoint %s: test failed", r.Endpoint)
	}
	return nil
}

func printReport(w io.Writer, r adapter.Report) {
	fmt.Fprintf(w, "Endpoint %s\n", r.Endpoint)
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  [%s] %s: %s\n", mark, c.Name, c.Detail)
	}
	if len(r.Strategies) > 0 {
		fmt.Fprintln(w, "Write strategy:")
		for _, typ := range slices.Sorted(maps.Keys(r.Strategies)) {
			fmt.Fprintf(w, "  %s: %s\n", typ, r.Strategies[typ])
		}
	}
	if len(r.Missing) > 0 {
		fmt.Fprintln(w, "Missing for a full sync:")
		for _, m := range r.Missing {
			fmt.Fprintf(w, "  - %s\n", m)
		}
	}
	if r.OK {
		fmt.Fprintln(w, "Result: the endpoint works.")
	} else {
		fmt.Fprintln(w, "Result: the endpoint does NOT work yet (see above).")
	}
}

// syncCmd runs `kapfhir sync backfill --endpoint ID` and
// `kapfhir sync reconcile --endpoint ID [--repair]`.
func syncCmd(ctx context.Context, cfg config.Config, log *slog.Logger, sub, id string, repair bool, w io.Writer) error {
	mgr, closeFn, err := openManager(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeFn()
	switch sub {
	case "backfill":
		// Run the workers here too: with a server running on the same store,
		// both share the work through leases.
		if err := mgr.Start(ctx); err != nil {
			return err
		}
		defer mgr.Stop()
		n, err := mgr.Backfill(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "queued %d resources for %s\n", n, id)
		return progress(ctx, mgr, id, n, w, time.Now)
	case "reconcile":
		if err := mgr.Start(ctx); err != nil {
			return err
		}
		mgr.Stop() // reconcile itself sends nothing; repairs are queued for the server
		rec, err := mgr.Reconcile(ctx, id, repair, "cli")
		if err != nil {
			return err
		}
		counts := map[string]int{}
		for _, f := range rec.Findings {
			counts[f.Kind]++
			fmt.Fprintf(w, "%-10s %s/%s (EHR ids %s): %s\n", f.Kind, f.ResourceType, f.ResourceID, strings.Join(f.EHRIDs, ","), f.Detail)
		}
		fmt.Fprintf(w, "checked %d: %d missing, %d drifted, %d duplicated, %d unknown", rec.Checked,
			counts[adapter.Missing], counts[adapter.Drifted], counts[adapter.Duplicated], counts[adapter.Unknown])
		if repair {
			fmt.Fprintf(w, "; %d queued again (run kapfhir serve, or sync backfill, to send them)", rec.Repaired)
		}
		fmt.Fprintln(w)
		return nil
	}
	return fmt.Errorf("unknown sync command %q (backfill or reconcile)", sub)
}

// progress draws a progress bar with an ETA until the endpoint's queue has
// drained (dead items are reported, not waited for); queued is what the
// backfill queued (the backlog may hold more).
func progress(ctx context.Context, mgr *adapter.Manager, id string, queued int, w io.Writer, now func() time.Time) error {
	start := now()
	total := queued
	for {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		s, drained, err := mgr.WaitDrained(wctx, id)
		cancel()
		if err != nil {
			return err
		}
		left := s.Queue.Backlog()
		if total < left {
			total = left
		}
		done := total - left
		fmt.Fprintf(w, "\r%s", bar(done, total, now().Sub(start)))
		if drained {
			fmt.Fprintf(w, "\ndone in %s: %d sent so far, %d dead (see /api/v1/sync/items?state=dead)\n",
				now().Sub(start).Round(time.Millisecond), s.Queue.Sent, s.Queue.ByState[outbox.Dead])
			return nil
		}
		if ctx.Err() != nil {
			fmt.Fprintln(w)
			return ctx.Err()
		}
	}
}

// bar renders "[#####.....] 50/100 50% ETA 3s".
func bar(done, total int, elapsed time.Duration) string {
	const width = 30
	if total <= 0 {
		return "[" + strings.Repeat("#", width) + "] 0/0 100%"
	}
	filled := done * width / total
	eta := "?"
	if done > 0 {
		eta = (time.Duration(float64(elapsed) / float64(done) * float64(total-done))).Round(time.Second).String()
	}
	return fmt.Sprintf("[%s%s] %d/%d %3d%% ETA %s", strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total, done*100/total, eta)
}
