// Package app runs kapfhir's use cases: enrol a patient, schedule a
// programme, change a session, add a booster or maintenance plan, record a
// measurement. Each runs in one store transaction that writes the domain
// change and the new versions of every FHIR resource it affects, so a commit
// leaves domain and FHIR in step and a rollback leaves nothing behind.
package app

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/mapping"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// Catalogue is the protocol catalogue the service schedules from.
type Catalogue interface {
	Get(id string) (treatment.Protocol, bool)
	All() []treatment.Protocol
}

// Options configures a Service.
type Options struct {
	Store     store.Store
	Catalogue Catalogue
	Calendar  treatment.Calendar
	// IdentifierSystem overrides the per-installation identifier system.
	IdentifierSystem string
	// CanonicalBase is the base of kapfhir's canonical URLs; default
	// mapping.DefaultCanonicalBase.
	CanonicalBase string
	Now           func() time.Time // default time.Now
	NewID         func() string    // default random UUIDs
	Logger        *slog.Logger
	// Notify is called after a transaction that enqueued sync work commits
	// (the sync engine wakes up). Optional.
	Notify func()
	// Seal is the one Box that seals secrets kept in the store. The use
	// cases keep none; the service holds it for those that do (the sync
	// manager's endpoint credentials, the authorization server's keys).
	Seal *seal.Box
}

// Service runs the use cases.
type Service struct {
	store store.Store
	cat   Catalogue
	cal   treatment.Calendar
	opts  mapping.Options
	// installation is the installation id (audit records' source).
	installation string
	now          func() time.Time
	newID        func() string
	log          *slog.Logger
	notify       func()
	seal         *seal.Box
}

// metaInstallation is the store meta key of the installation id.
const metaInstallation = "installation_id"

// New prepares the service: it settles the installation's identifier system
// (generated once, kept in the store) and publishes every protocol as a
// PlanDefinition (a new version only when a protocol changed).
func New(ctx context.Context, o Options) (*Service, error) {
	if o.CanonicalBase == "" {
		o.CanonicalBase = mapping.DefaultCanonicalBase
	}
	s := &Service{
		store:  o.Store,
		cat:    o.Catalogue,
		cal:    o.Calendar,
		opts:   mapping.Options{IdentifierSystem: o.IdentifierSystem, CanonicalBase: o.CanonicalBase},
		now:    o.Now,
		newID:  o.NewID,
		log:    o.Logger,
		notify: o.Notify,
		seal:   o.Seal,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.newID == nil {
		s.newID = func() string { return uuid.NewString() }
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.cal.Location == nil {
		s.cal = treatment.DefaultCalendar(time.UTC)
	}
	err := s.store.InTx(ctx, func(tx store.Tx) error {
		id, err := tx.Meta(ctx, metaInstallation)
		if err != nil {
			return err
		}
		if id == "" {
			id = uuid.NewString()
			if err := tx.SetMeta(ctx, metaInstallation, id); err != nil {
				return err
			}
		}
		s.installation = id
		if s.opts.IdentifierSystem == "" {
			s.opts.IdentifierSystem = "urn:uuid:" + id
		}
		for _, p := range s.cat.All() {
			if _, err := s.put(ctx, tx, mapping.PlanDefinition(p, s.opts), "", nil); err != nil {
				return fmt.Errorf("publish protocol %s: %w", p.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("app: start: %w", err)
	}
	return s, nil
}

// Installation is this installation's id (generated once, kept in the store).
func (s *Service) Installation() string { return s.installation }

// Seal is the Box that seals secrets kept in the store (nil when none was given).
func (s *Service) Seal() *seal.Box { return s.seal }

// IdentifierSystem is the identifier system every resource of this installation carries.
func (s *Service) IdentifierSystem() string { return s.opts.IdentifierSystem }

// Protocols lists the catalogue, sorted by id.
func (s *Service) Protocols() []treatment.Protocol { return s.cat.All() }

// Protocol returns one protocol, or a not_found error.
func (s *Service) Protocol(id string) (treatment.Protocol, error) {
	p, ok := s.cat.Get(id)
	if !ok {
		return treatment.Protocol{}, treatment.NotFound("protocol", id)
	}
	return p, nil
}

// timestamp is now, truncated to what FHIR instants and the stores keep.
func (s *Service) timestamp() time.Time { return s.now().UTC().Truncate(time.Millisecond) }

// put stores a new version of r unless its content is unchanged, and
// enqueues the new version for every enabled endpoint of eps (the
// transaction's endpoints, read once by the caller) that takes its type;
// patientID orders the sync. It reports whether a version was written.
func (s *Service) put(ctx context.Context, tx store.Tx, r mapping.Resource, patientID string, eps []endpoint.Stored) (bool, error) {
	cur, oldHash, err := tx.CurrentVersion(ctx, r.Type, r.ID)
	if err != nil {
		return false, err
	}
	hash := mapping.ContentHash(r)
	if cur > 0 && bytes.Equal(hash, oldHash) {
		return false, nil
	}
	now := s.timestamp()
	w, err := mapping.Write(r, cur+1, now, hash, fhirjson.Marshal)
	if err != nil {
		return false, err
	}
	if err := tx.PutVersion(ctx, w); err != nil {
		return false, err
	}
	if a, ok := tx.(*auditedTx); ok {
		a.wrote(r.Type, r.ID, cur+1, patientID)
	}
	var work []outbox.Work
	for _, e := range eps {
		if e.Enabled && e.Pushes(r.Type) {
			work = append(work, outbox.Work{EndpointID: e.ID, ResourceType: r.Type, ResourceID: r.ID, PatientID: patientID, Version: cur + 1})
		}
	}
	if len(work) > 0 {
		if err := tx.Enqueue(ctx, work, now); err != nil {
			return false, err
		}
	}
	return true, nil
}

// inTx runs fn in one store transaction and, once it has committed, wakes
// the sync engine: the work fn enqueued is durable from then on. The
// resources fn wrote are audited in the same transaction, as done by the
// agent ctx carries (audit.AgentFrom).
func (s *Service) inTx(ctx context.Context, fn func(tx store.Tx) error) error {
	err := s.store.InTx(ctx, func(tx store.Tx) error {
		a := &auditedTx{Tx: tx}
		if err := fn(a); err != nil {
			return err
		}
		if rec, ok := a.record(audit.AgentFrom(ctx), s.installation, s.timestamp()); ok {
			if _, err := tx.AppendAudit(ctx, rec); err != nil {
				return fmt.Errorf("audit: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if s.notify != nil {
		s.notify()
	}
	return nil
}

// auditedTx notes the resource versions a domain change writes.
type auditedTx struct {
	store.Tx
	refs     []string
	created  bool
	updated  bool
	patients []string
}

func (a *auditedTx) wrote(typ, id string, version int64, patientID string) {
	a.refs = append(a.refs, fmt.Sprintf("%s/%s/_history/%d", typ, id, version))
	if version == 1 {
		a.created = true
	} else {
		a.updated = true
	}
	if patientID != "" && !slices.Contains(a.patients, patientID) {
		a.patients = append(a.patients, patientID)
	}
}

// record is the audit record of what was written (ok false: nothing was).
// A change that creates and updates is an update: the programme changed.
func (a *auditedTx) record(agent audit.Agent, source string, now time.Time) (audit.Record, bool) {
	if len(a.refs) == 0 {
		return audit.Record{}, false
	}
	r := audit.Record{Time: now, Subtype: audit.Update, Outcome: audit.Success, Agent: agent, Source: source}
	if !a.updated {
		r.Subtype = audit.Create
	}
	if len(a.patients) == 1 {
		r.PatientID = a.patients[0]
	}
	for _, ref := range a.refs {
		r.Entities = append(r.Entities, audit.Entity{Ref: ref})
	}
	return r, true
}

// putProgram re-maps a programme and stores the resources that changed.
func (s *Service) putProgram(ctx context.Context, tx store.Tx, prog treatment.Program) error {
	rs, err := mapping.Program(prog, s.cat.Get, s.opts)
	if err != nil {
		return fmt.Errorf("map programme %s: %w", prog.ID, err)
	}
	eps, err := tx.Endpoints(ctx)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if _, err := s.put(ctx, tx, r, prog.PatientID, eps); err != nil {
			return fmt.Errorf("store %s/%s: %w", r.Type, r.ID, err)
		}
	}
	return nil
}
