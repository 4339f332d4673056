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
//
// Every poll is an inbound-poll audit record (what was found and applied,
// the high-water mark), written in the transaction that moves the
// high-water mark; a failed poll is recorded as a failure.
package pull

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
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
	// Source is the installation id: the observer of the poll's audit record.
	Source   string
	Store    Store
	Sessions Sessions
	EHR      EHR
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

// Once polls once and returns how many session changes it applied. The
// poll is recorded (audit.InboundPoll) with the new high-water mark in one
// transaction, whether it succeeded or not.
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
	res, perr := p.poll(ctx, "Appointment?"+q.Encode(), hwm)
	rec := p.record(res, q.Encode(), perr, p.o.Source)
	// Recorded even when ctx ended mid-poll (shutdown): the poll happened.
	rctx := context.WithoutCancel(ctx)
	err = p.o.Store.InTx(rctx, func(tx store.Tx) error {
		if perr == nil && res.seen.After(hwm) {
			if err := tx.SetMeta(rctx, p.hwmKey(), res.seen.UTC().Format(time.RFC3339Nano)); err != nil {
				return fmt.Errorf("save high-water mark: %w", err)
			}
		}
		_, err := tx.AppendAudit(rctx, rec)
		return err
	})
	switch {
	case perr != nil:
		return res.applied, perr
	case err != nil:
		return res.applied, fmt.Errorf("pull: %w", err)
	}
	return res.applied, nil
}

// polled is what one poll found.
type polled struct {
	found   int       // appointments kapfhir owns in the answer
	applied int       // session changes applied
	refused int       // EHR statuses that could not be applied
	status  int       // the EHR's answer to a failed search (0: none or not a search failure)
	seen    time.Time // the latest lastUpdated seen (the new high-water mark)
}

// poll searches from path on, page by page, and applies what it finds.
func (p *Poller) poll(ctx context.Context, path string, hwm time.Time) (polled, error) {
	res := polled{seen: hwm}
	prefix := p.o.IdentifierSystem + "|"
	for pages := 0; path != "" && pages < 1000; pages++ {
		resp, err := p.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodGet, Path: path, Idempotent: true})
		if err != nil {
			return res, err
		}
		if resp.Status != http.StatusOK {
			res.status = resp.Status
			return res, fmt.Errorf("pull: searching appointments answered %d", resp.Status)
		}
		page, err := ehrclient.ParsePage(resp.Body)
		if err != nil {
			return res, fmt.Errorf("pull: the search answer is not a Bundle: %w", err)
		}
		for _, e := range page.Entries {
			if !e.Match || e.ResourceType != "Appointment" {
				continue
			}
			if e.LastUpdated.After(res.seen) {
				res.seen = e.LastUpdated
			}
			var ids []string
			for _, ident := range e.Identifiers {
				if v, ok := strings.CutPrefix(ident, prefix); ok {
					ids = append(ids, v)
				}
			}
			if len(ids) != 1 {
				continue
			}
			res.found++
			status, ok := statuses[e.Status]
			if !ok {
				continue
			}
			n, err := p.apply(ctx, ids[0], status, e.ID)
			if err != nil {
				return res, err
			}
			switch n {
			case applied:
				res.applied++
			case refused:
				res.refused++
			}
		}
		path = page.Next
	}
	return res, nil
}

// Detail keys of an inbound-poll record.
const (
	DetailFound         = "found"           // appointments kapfhir owns in the EHR's answer
	DetailApplied       = "applied"         // session changes applied
	DetailRefused       = "refused"         // EHR statuses that could not be applied
	DetailHighWaterMark = "high-water-mark" // the latest lastUpdated seen, RFC 3339
	DetailStatus        = "status"          // the EHR's HTTP status of a failed search
)

// record is the audit record of a poll: its query (no PHI: kapfhir's
// identifier system and a date), counts and high-water mark, and for a
// failed poll the reason, without the error's text.
func (p *Poller) record(res polled, query string, err error, source string) audit.Record {
	rec := audit.Record{
		Time:       p.o.Now(),
		Subtype:    audit.InboundPoll,
		Outcome:    audit.Success,
		Agent:      audit.System,
		EndpointID: p.o.Endpoint.ID,
		Entities:   []audit.Entity{{Query: query}},
		Detail: map[string]string{
			DetailFound:   strconv.Itoa(res.found),
			DetailApplied: strconv.Itoa(res.applied),
			DetailRefused: strconv.Itoa(res.refused),
		},
		Source: source,
	}
	if !res.seen.IsZero() {
		rec.Detail[DetailHighWaterMark] = res.seen.UTC().Format(time.RFC3339Nano)
	}
	switch {
	case err == nil:
	case res.status != 0:
		rec.Outcome, rec.OutcomeDesc = audit.MinorFailure, fmt.Sprintf("the EHR answered %d", res.status)
		rec.Detail[DetailStatus] = strconv.Itoa(res.status)
	default:
		rec.Outcome, rec.OutcomeDesc = audit.MinorFailure, "the poll did not complete"
	}
	return rec
}

// change is what apply did.
type change int

const (
	unchanged change = iota // the statuses agree, or the session is not kapfhir's (any more)
	applied                 // the session took the EHR's status
	refused                 // the EHR's status cannot be applied to the session
)

// apply sets the session's status to the EHR's when they differ, and
// records the change with its source.
func (p *Poller) apply(ctx context.Context, sessionID, status, ehrID string) (change, error) {
	prog, err := p.o.Store.ProgramBySession(ctx, sessionID)
	if treatment.ErrorKind(err) == treatment.KindNotFound {
		return unchanged, nil // not ours (any more)
	}
	if err != nil {
		return unchanged, err
	}
	var cur treatment.SessionStatus
	for _, s := range prog.Sessions {
		if s.ID == sessionID {
			cur = s.Status
		}
	}
	if string(cur) == status {
		return unchanged, nil
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
		return unchanged, err
	}
	if lerr := p.o.Store.AppendLog(ctx, ev); lerr != nil {
		return unchanged, lerr
	}
	if err != nil {
		return refused, nil
	}
	return applied, nil
}
