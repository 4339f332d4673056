// Package pull polls an EHR for changes to the Appointments kapfhir owns and
// applies the EHR's status to kapfhir's sessions: an appointment cancelled,
// marked no-show, arrived or fulfilled in the EHR updates the session, which
// reschedules the programme per its protocol and re-maps the CarePlan (the
// new versions then flow back to the EHR through the outbox). The EHR wins on
// appointment status; kapfhir wins on plan structure.
//
// Changes are found by kapfhir's identifier system and _lastUpdated, from a
// high-water mark taken from the EHR's own timestamps (kept in the store)
// minus an overlap window, so clock skew and late commits are not missed;
// re-reading an appointment already applied changes nothing.
package pull

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// Store is what the poller needs of the store.
type Store interface {
	InTx(ctx context.Context, fn func(tx store.Tx) error) error
	ProgramBySession(ctx context.Context, sessionID string) (treatment.Program, error)
	AppendLog(ctx context.Context, e outbox.Event) error
}

// Sessions applies session changes (the application service).
type Sessions interface {
	UpdateSession(ctx context.Context, sessionID string, in app.SessionChange) (treatment.Program, error)
}

// EHR is what the poller needs of the EHR client.
type EHR interface {
	Do(ctx context.Context, r ehrclient.Request) (*ehrclient.Response, error)
}

// Options configures a Poller.
type Options struct {
	Endpoint         endpoint.Endpoint
	IdentifierSystem string
	Store            Store
	Sessions         Sessions
	EHR              EHR
	// Overlap is subtracted from the high-water mark (default 5 minutes).
	Overlap time.Duration
	Now     func() time.Time
	Logger  *slog.Logger
}

// Poller polls one endpoint.
type Poller struct {
	o   Options
	log *slog.Logger
}

// New returns a poller.
func New(o Options) *Poller {
	if o.Overlap <= 0 {
		o.Overlap = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Poller{o: o, log: o.Logger.With("endpoint", o.Endpoint.ID)}
}

// statuses are the EHR appointment statuses applied to sessions.
var statuses = map[string]string{
	"cancelled": "cancelled",
	"noshow":    "noshow",
	"fulfilled": "fulfilled",
	"arrived":   "arrived",
}

// Run polls every interval until ctx ends.
func (p *Poller) Run(ctx context.Context) error {
	every := time.Duration(max(p.o.Endpoint.Pull.IntervalSeconds, 1)) * time.Second
	for {
		if _, err := p.Once(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("pull from the EHR failed", "error", err)
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (p *Poller) hwmKey() string { return "pull.hwm." + p.o.Endpoint.ID }

// Once polls once and returns how many session changes it applied.
func (p *Poller) Once(ctx context.Context) (int, error) {
	var hwm time.Time
	err := p.o.Store.InTx(ctx, func(tx store.Tx) error {
		v, err := tx.Meta(ctx, p.hwmKey())
		if err == nil && v != "" {
			hwm, err = time.Parse(time.RFC3339Nano, v)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("pull: high-water mark: %w", err)
	}
	q := url.Values{"identifier": {p.o.IdentifierSystem + "|"}, "_sort": {"_lastUpdated"}, "_count": {"100"}}
	if !hwm.IsZero() {
		q.Set("_lastUpdated", "ge"+hwm.Add(-p.o.Overlap).UTC().Format(time.RFC3339))
	}
	path := "Appointment?" + q.Encode()
	applied, seen := 0, hwm
	for pages := 0; path != "" && pages < 1000; pages++ {
		resp, err := p.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodGet, Path: path, Idempotent: true})
		if err != nil {
			return applied, err
		}
		if resp.Status != http.StatusOK {
			return applied, fmt.Errorf("pull: searching appointments answered %d", resp.Status)
		}
		page, err := ehrclient.ParsePage(resp.Body)
		if err != nil {
			return applied, fmt.Errorf("pull: the search answer is not a Bundle: %w", err)
		}
		prefix := p.o.IdentifierSystem + "|"
		for _, e := range page.Entries {
			if !e.Match || e.ResourceType != "Appointment" {
				continue
			}
			if e.LastUpdated.After(seen) {
				seen = e.LastUpdated
			}
			var ids []string
			for _, ident := range e.Identifiers {
				if v, ok := strings.CutPrefix(ident, prefix); ok {
					ids = append(ids, v)
				}
			}
			status, ok := statuses[e.Status]
			if len(ids) != 1 || !ok {
				continue
			}
			n, err := p.apply(ctx, ids[0], status, e.ID)
			if err != nil {
				return applied, err
			}
			applied += n
		}
		path = page.Next
	}
	if seen.After(hwm) {
		err := p.o.Store.InTx(ctx, func(tx store.Tx) error {
			return tx.SetMeta(ctx, p.hwmKey(), seen.UTC().Format(time.RFC3339Nano))
		})
		if err != nil {
			return applied, fmt.Errorf("pull: save high-water mark: %w", err)
		}
	}
	return applied, nil
}

// apply sets the session's status to the EHR's when they differ, and
// records the change with its source.
func (p *Poller) apply(ctx context.Context, sessionID, status, ehrID string) (int, error) {
	prog, err := p.o.Store.ProgramBySession(ctx, sessionID)
	if treatment.ErrorKind(err) == treatment.KindNotFound {
		return 0, nil // not ours (any more)
	}
	if err != nil {
		return 0, err
	}
	var cur treatment.SessionStatus
	for _, s := range prog.Sessions {
		if s.ID == sessionID {
			cur = s.Status
		}
	}
	if string(cur) == status {
		return 0, nil
	}
	ev := outbox.Event{
		At: p.o.Now().UTC(), EndpointID: p.o.Endpoint.ID, ResourceType: "Appointment", ResourceID: sessionID,
		Action: "pulled", EHRID: ehrID, Actor: "ehr:" + p.o.Endpoint.ID,
		Detail: fmt.Sprintf("session status %s -> %s (the EHR wins on appointment status)", cur, status),
	}
	_, err = p.o.Sessions.UpdateSession(ctx, sessionID, app.SessionChange{Status: status})
	switch k := treatment.ErrorKind(err); {
	case err == nil:
		p.log.Info("applied the EHR's appointment status", "session", sessionID, "status", status)
	case k == treatment.KindConflict || k == treatment.KindInvalid:
		ev.Action = "pull-refused"
		ev.Detail = fmt.Sprintf("the EHR's status %s cannot be applied to a %s session: %v", status, cur, err)
		p.log.Warn("cannot apply the EHR's appointment status", "session", sessionID, "status", status, "error", err)
	default:
		return 0, err
	}
	if lerr := p.o.Store.AppendLog(ctx, ev); lerr != nil {
		return 0, lerr
	}
	if err != nil {
		return 0, nil
	}
	return 1, nil
}
